// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Process life: exec, exit, fork. */
#include "amber.bpf.h"

/* The overlay inode, for its upper dentry; a flavor so the build needs no overlay BTF. */
struct ovl_inode___amber {
	struct inode vfs_inode;
	struct dentry *__upperdentry;
} __attribute__((preserve_access_index));

/* True when the overlay inode has an upper dentry: the file was written in the container. */
static __always_inline int ovl_on_upper(struct inode *inode)
{
	struct dentry *upper = NULL;
	long off;

	if (!amber_ovl_by_inode_size && bpf_core_type_exists(struct ovl_inode___amber))
		off = bpf_core_field_offset(struct ovl_inode___amber, __upperdentry) -
		      bpf_core_field_offset(struct ovl_inode___amber, vfs_inode);
	else
		/* overlay is a module without BTF: __upperdentry follows the VFS inode */
		off = bpf_core_type_size(struct inode);
	bpf_probe_read_kernel(&upper, sizeof(upper), (void *)inode + off);
	return upper != NULL;
}

#define DELETED_SUFFIX_LEN 10

/*
 * The executable's path as /proc/<pid>/exe shows it (d_path): a pseudo file
 * such as a memfd is "/<name> (deleted)" (the kernel's simple_dname), an
 * unlinked file its last path + " (deleted)"; one exception below, where
 * d_path says only "/". Appended to the record at off; returns its length.
 */
static __always_inline __u32 exe_path_append(struct amber_scratch *s, __u32 off, struct file *file,
					     int *truncated)
{
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	struct vfsmount *mnt = BPF_CORE_READ(file, f_path.mnt);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	struct dentry *mnt_root = BPF_CORE_READ(mnt, mnt_root);
	__u32 n, pos;

	if (dentry == parent && dentry != mnt_root) {
		struct qstr name = BPF_CORE_READ(dentry, d_name);
		__u32 len = name.len;

		if (len > AMBER_NAME_MAX)
			len = AMBER_NAME_MAX;
		s->record[off & (AMBER_RECORD_MAX - 1)] = '/';
		bpf_probe_read_kernel(&s->record[(off + 1) & (AMBER_RECORD_MAX - 1)], len & AMBER_NAME_MAX,
				      name.name);
		n = 1 + len;
		*truncated = 0;
	} else {
		struct mount *m = (void *)mnt - bpf_core_field_offset(struct mount, mnt);

		if (dentry == mnt_root && dentry != parent && BPF_CORE_READ(m, mnt_parent) == m) {
			/*
			 * A file that is the root of a detached mount (runc 1.1 re-executes
			 * itself from a read-only bind of its binary, then unmounted): d_path
			 * says only "/". Its path in its own filesystem names the file.
			 */
			struct task_struct *task = (struct task_struct *)bpf_get_current_task();

			mnt = BPF_CORE_READ(task, fs, root.mnt);
		}
		pos = path_build(s, dentry, mnt, truncated);
		n = path_append(s, off, pos);
		/* d_unlinked(): unhashed and not a root */
		if (dentry == parent || BPF_CORE_READ(dentry, d_hash.pprev) != NULL)
			return n;
	}
	/* " (deleted)", byte by byte: a string literal would be a .rodata.str section the linked object cannot load */
	pos = (off + n) & (AMBER_RECORD_MAX - 1);
	s->record[pos + 0] = ' ';
	s->record[pos + 1] = '(';
	s->record[pos + 2] = 'd';
	s->record[pos + 3] = 'e';
	s->record[pos + 4] = 'l';
	s->record[pos + 5] = 'e';
	s->record[pos + 6] = 't';
	s->record[pos + 7] = 'e';
	s->record[pos + 8] = 'd';
	s->record[pos + 9] = ')';
	return n + DELETED_SUFFIX_LEN;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(amber_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct amber_scratch *s;
	struct amber_exec *e;
	struct file *file;
	struct inode *inode;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, nargs;
	const char *filename;
	__u32 off, pos;
	long n;
	int truncated;

	if (ignored_tgid(bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = scratch_get();
	if (!s)
		return 0;
	e = (void *)s->record;
	header_fill(&e->hdr, AMBER_EXEC);
	off = sizeof(*e);

	filename = BPF_CORE_READ(bprm, filename);
	n = bpf_probe_read_kernel_str(&s->record[off & (AMBER_RECORD_MAX - 1)], AMBER_PATH_MAX, filename);
	n = n > 0 ? n - 1 : 0;
	if (n == AMBER_PATH_MAX - 1)
		e->hdr.flags |= AMBER_F_PATH_TRUNCATED;
	e->filename_len = n;
	off += n & (AMBER_PATH_MAX - 1);

	file = BPF_CORE_READ(bprm, file);
	n = exe_path_append(s, off, file, &truncated);
	if (truncated)
		e->hdr.flags |= AMBER_F_PATH_TRUNCATED;
	e->exe_path_len = n;
	off += n & (AMBER_PATH_MAX * 2 - 1);

	inode = BPF_CORE_READ(file, f_inode);
	if (BPF_CORE_READ(inode, i_sb, s_magic) == OVERLAYFS_SUPER_MAGIC && ovl_on_upper(inode))
		e->hdr.flags |= AMBER_F_UPPER_LAYER;
	/* memfd and deleted files have no link left: nothing on disk to inspect */
	if (BPF_CORE_READ(inode, __i_nlink) == 0)
		e->hdr.flags |= AMBER_F_FILELESS;

	mm = BPF_CORE_READ(task, mm);
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	nargs = arg_end - arg_start;
	if (nargs > AMBER_ARGS_MAX) {
		nargs = AMBER_ARGS_MAX;
		e->hdr.flags |= AMBER_F_ARGS_TRUNCATED;
	}
	if (bpf_probe_read_user(&s->record[off & (AMBER_RECORD_MAX - 1)], nargs & (AMBER_ARGS_MAX * 2 - 1),
				(void *)arg_start) < 0)
		nargs = 0;
	e->args_len = nargs;
	off += nargs & (AMBER_ARGS_MAX * 2 - 1);

	/*
	 * An interpreter runs the file (binfmt_script, binfmt_misc) when bprm->interp
	 * was replaced; bprm->file is then the interpreter's, the script survives
	 * only as the filename the caller passed. A relative one needs the caller's
	 * cwd to be absolute: it follows, when the record has room for it.
	 */
	e->cwd_len = 0;
	if (BPF_CORE_READ(bprm, interp) != filename) {
		e->hdr.flags |= AMBER_F_SCRIPT;
		if (e->filename_len > 0 && s->record[sizeof(*e)] != '/') {
			struct task_struct *cur = (struct task_struct *)bpf_get_current_task();

			pos = path_build(s, BPF_CORE_READ(cur, fs, pwd.dentry), BPF_CORE_READ(cur, fs, pwd.mnt),
					 &truncated);
			if (off + (AMBER_PATH_MAX - pos) <= AMBER_RECORD_MAX && !truncated) {
				n = path_append(s, off, pos);
				e->cwd_len = n;
				off += n & (AMBER_PATH_MAX * 2 - 1);
			} else {
				e->hdr.flags |= AMBER_F_PATH_TRUNCATED;
			}
		}
	}

	record_submit(e, off);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(amber_exit, struct task_struct *task)
{
	struct amber_scratch *s;
	struct amber_exit *e;
	int code;

	if (ignored_tgid(bpf_get_current_pid_tgid() >> 32))
		return 0;
	/* one record per process: only when its last thread goes */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	s = scratch_get();
	if (!s)
		return 0;
	e = (void *)s->record;
	header_fill(&e->hdr, AMBER_EXIT);
	code = BPF_CORE_READ(task, exit_code);
	e->exit_code = (code >> 8) & 0xff;
	e->signal = code & 0x7f;
	record_submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(amber_fork, struct task_struct *parent, struct task_struct *child)
{
	struct amber_scratch *s;
	struct amber_fork *e;

	/* new threads are not processes */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	if (ignored_tgid(bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = scratch_get();
	if (!s)
		return 0;
	e = (void *)s->record;
	header_fill(&e->hdr, AMBER_FORK);
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->_pad = 0;
	record_submit(e, sizeof(*e));
	return 0;
}
