// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* File opens, taken at syscall exit: the arguments and the result in one place. */
#include "amber.bpf.h"

#define AMBER_O_CREAT 0100
#define AMBER_O_TMPFILE 020000000

/*
 * Called by the sys_exit dispatcher (syscalls.bpf.c) for open, openat,
 * openat2 and creat, with their arguments decoded. Global (not inlined): the
 * verifier checks it once, and the dispatcher stays one program.
 */
__noinline int amber_file_open(__u64 upath_addr, __u32 flags, __u32 mode, long ret)
{
	const char *upath = (const char *)upath_addr;
	struct task_struct *task = bpf_get_current_task_btf();
	struct amber_scratch *s;
	struct amber_open *e;
	__u32 off;
	long n;

	if (ignored_tgid(task->tgid))
		return 0;
	s = scratch_get();
	if (!s)
		return 0;
	e = (void *)s->record;
	header_fill_task(&e->hdr, AMBER_OPEN, task);
	e->ret = ret;
	e->flags = flags;
	e->mode = (flags & (AMBER_O_CREAT | AMBER_O_TMPFILE)) ? mode : 0;
	e->_pad = 0;
	off = sizeof(*e);

	n = bpf_probe_read_user_str(&s->record[off], AMBER_PATH_MAX, upath);
	n = n > 0 ? n - 1 : 0;
	if (n == AMBER_PATH_MAX - 1)
		e->hdr.flags |= AMBER_F_PATH_TRUNCATED;
	/*
	 * A relative path that opened is resolved from the file's dentries; an
	 * absolute one is kept as passed (cheap, and already the task's view).
	 */
	if (ret >= 0 && (n == 0 || s->record[off] != '/')) {
		struct file *f = fd_file(ret);

		if (f) {
			int truncated;
			__u32 pos = path_build(s, BPF_CORE_READ(f, f_path.dentry),
					       BPF_CORE_READ(f, f_path.mnt), &truncated);

			n = path_append(s, off, pos);
			e->hdr.flags |= AMBER_F_PATH_RESOLVED;
			if (truncated)
				e->hdr.flags |= AMBER_F_PATH_TRUNCATED;
		}
	}
	e->path_len = n;
	record_submit(e, off + (n & (AMBER_PATH_MAX * 2 - 1)));
	return 0;
}
