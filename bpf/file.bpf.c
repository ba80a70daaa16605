// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* File opens, taken at syscall exit so one program sees the arguments and the result. */
#include "amber.bpf.h"

#define AMBER_O_CREAT 0100
#define AMBER_O_WRONLY 01
#define AMBER_O_TRUNC 01000

SEC("tp_btf/sys_exit")
int BPF_PROG(amber_open, struct pt_regs *regs, long ret)
{
	long nr = syscall_nr(regs);
	const char *upath;
	__u32 flags, mode, off;
	struct amber_scratch *s;
	struct amber_open *e;
	long n;

	if (nr == NR_openat) {
		upath = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs);
		flags = PT_REGS_PARM3_CORE_SYSCALL(regs);
		mode = PT_REGS_PARM4_CORE_SYSCALL(regs);
	} else if (nr == NR_open) {
		upath = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs);
		flags = PT_REGS_PARM2_CORE_SYSCALL(regs);
		mode = PT_REGS_PARM3_CORE_SYSCALL(regs);
	} else if (nr == NR_openat2) {
		struct open_how how = {};

		upath = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs);
		bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
		flags = how.flags;
		mode = how.mode;
	} else if (nr == NR_creat) {
		upath = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs);
		flags = AMBER_O_CREAT | AMBER_O_WRONLY | AMBER_O_TRUNC;
		mode = PT_REGS_PARM2_CORE_SYSCALL(regs);
	} else {
		return 0;
	}
	if (ignored_tgid(bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = scratch_get();
	if (!s)
		return 0;
	e = (void *)s->record;
	header_fill(&e->hdr, AMBER_OPEN);
	e->ret = ret;
	e->flags = flags;
	e->mode = (flags & AMBER_O_CREAT) ? mode : 0;
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
