/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Kernel-side helpers shared by every program file: the maps, the load-time
 * settings, the common header, path building and record submission.
 * The maps are __weak so that each family's object can name them and
 * `bpftool gen object` links them into one.
 */
#ifndef AMBER_BPF_H
#define AMBER_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "events.h"

#define OVERLAYFS_SUPER_MAGIC 0x794c7630
#define AMBER_PATH_DEPTH 48
#define AMBER_NAME_MAX 255

/* Load-time settings (rodata), defined in amber.bpf.c, set by the addon before load. */
extern const volatile __u64 amber_wakeup_bytes;   /* wake the reader once this much is queued */
extern const volatile __u32 amber_fill_check_bytes; /* look at the ring's fill after this much, per CPU */
extern const volatile __u8 amber_ovl_by_inode_size; /* 1 = skip the ovl_inode BTF path (tests) */
extern const volatile __u32 amber_families;       /* AMBER_FAMILY_* (events.h): what the sys_exit dispatcher hands on */

/*
 * The agent's own thread group id as the kernel sees it (host PID namespace);
 * 0 = record everyone. Written by amber_self (amber.bpf.c), which the addon
 * runs once in its own context: inside a PID namespace the agent cannot know
 * this number itself.
 */
extern volatile __u32 amber_self_tgid;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20); /* set by the addon before load */
} events SEC(".maps") __weak;

/* Records that did not fit in the ring, per kind: never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AMBER_KIND_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps") __weak;

/* Records are built here (too large for the 512-byte stack), then copied to the ring. */
struct amber_scratch {
	__u8 record[2 * AMBER_RECORD_MAX];
	char path[2 * AMBER_PATH_MAX];
	__u32 path_pos;
	__u32 path_truncated;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct amber_scratch);
} scratch SEC(".maps") __weak;

/* Bytes this CPU submitted since it last looked at the ring's fill (record_submit). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unchecked SEC(".maps") __weak;

/* v & mask, kept where the verifier sees it (clang folds a mask it can prove redundant). */
#define AMBER_BOUND(v, mask) ({ asm volatile("" : "+r"(v)); (v) & (mask); })

static __always_inline struct amber_scratch *scratch_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

static __always_inline int ignored_tgid(__u32 tgid)
{
	return amber_self_tgid != 0 && tgid == amber_self_tgid;
}

/* The header fields the helpers give every program type (cgroup_skb has no BTF task). */
static __always_inline void header_fill_ids(struct amber_header *h, __u8 kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->kind = kind;
	h->flags = 0;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ts = bpf_ktime_get_boot_ns();
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/*
 * The common header from the current task (a BTF pointer), for tracing
 * programs: every field but the clock is a plain load, not a helper call.
 * Measured on an open: the helpers for ids, uid/gid, cgroup and comm (and the
 * calls they make: from_kuid, strscpy_pad, ...) were a third of its cost on a
 * CPU whose returns go through a mitigation thunk. The values are the
 * helpers': uid/gid are the init namespace's (kuid.val), the cgroup is the v2
 * one (dfl_cgrp), comm is zero-padded by the kernel's set_task_comm and cut
 * at 15 bytes like the helper's.
 */
static __always_inline void header_fill_task(struct amber_header *h, __u8 kind, struct task_struct *task)
{
	const struct cred *cred = task->cred;
	const __u64 *comm = (const __u64 *)task->comm;
	__u64 *dst = (__u64 *)h->comm;

	h->kind = kind;
	h->flags = 0;
	h->pid = task->tgid;
	h->tid = task->pid;
	h->ts = bpf_ktime_get_boot_ns();
	h->uid = cred->uid.val;
	h->gid = cred->gid.val;
	h->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	if (bpf_core_field_exists(task->comm)) {
		dst[0] = comm[0];
		/* byte 15 is always NUL today; forced, should comm ever grow (little-endian) */
		dst[1] = comm[1] & 0x00ffffffffffffffULL;
	} else {
		bpf_get_current_comm(h->comm, sizeof(h->comm)); /* a kernel that renamed the field */
	}
	h->ppid = task->real_parent->tgid;
	h->mntns = task->nsproxy->mnt_ns->ns.inum;
	h->netns = task->nsproxy->net_ns->ns.inum;
}

static __always_inline void header_fill(struct amber_header *h, __u8 kind)
{
	header_fill_task(h, kind, bpf_get_current_task_btf());
}

/* The same for programs that have no BTF task (cgroup_skb): probe reads. */
static __always_inline void header_fill_probed(struct amber_header *h, __u8 kind)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	header_fill_ids(h, kind);
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	h->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
}

static __always_inline void drop_count(__u32 kind)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &kind);
	if (n)
		*n += 1;
}

/*
 * Copy a built record to the ring. The reader is woken only once
 * amber_wakeup_bytes are queued; otherwise it drains on its own timer
 * (waking it per record costs the traced workload ~4x, see design.md).
 * The fill is looked at once per amber_fill_check_bytes a CPU submits, not
 * per record (the query was ~5% of an open's cost); the addon sizes that
 * step so that all CPUs together overshoot the threshold by a small part of
 * the ring's headroom.
 */
static __always_inline void record_submit(void *rec, __u32 size)
{
	struct amber_header *h = rec;
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u32 zero = 0;
	__u64 *since;

	if (size > AMBER_RECORD_MAX)
		size = AMBER_RECORD_MAX;
	h->size = size;
	since = bpf_map_lookup_elem(&unchecked, &zero);
	if (since) {
		*since += size;
		if (*since >= amber_fill_check_bytes) {
			*since = 0;
			if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= amber_wakeup_bytes)
				flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	if (bpf_ringbuf_output(&events, rec, size, flags) < 0)
		drop_count(h->kind);
}

/*
 * Build the absolute path of (dentry, vfsmnt) as the task sees it: walk the
 * dentries up to the task's root, crossing mount points. Written backwards
 * into s->path; returns the start offset, the path ends at AMBER_PATH_MAX.
 * The write position lives in the map, not a register: the verifier then
 * sees one state per iteration instead of one per path through the loop.
 */
static __always_inline __u32 path_build(struct amber_scratch *s, struct dentry *dentry,
					struct vfsmount *vfsmnt, int *truncated)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dentry *root_dentry = BPF_CORE_READ(task, fs, root.dentry);
	struct vfsmount *root_mnt = BPF_CORE_READ(task, fs, root.mnt);
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct mount *mnt = (void *)vfsmnt - mnt_off;
	__u32 pos;
	int i;

	s->path_pos = AMBER_PATH_MAX;
	s->path_truncated = 1;
	for (i = 0; i < AMBER_PATH_DEPTH; i++) {
		struct dentry *mnt_root, *parent;
		struct qstr name;
		__u32 len;

		if (dentry == root_dentry && vfsmnt == root_mnt) {
			s->path_truncated = 0;
			break;
		}
		mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		parent = BPF_CORE_READ(dentry, d_parent);
		if (dentry == mnt_root || dentry == parent) {
			struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

			if (dentry != mnt_root || mnt_parent == mnt) {
				/* the global root, or a mount not attached anywhere (memfd, pipes) */
				s->path_truncated = 0;
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = (void *)mnt + mnt_off;
			continue;
		}
		name = BPF_CORE_READ(dentry, d_name);
		len = name.len;
		pos = s->path_pos;
		if (len > AMBER_NAME_MAX || pos > AMBER_PATH_MAX || len + 1 > pos)
			break; /* truncated: the prefix is lost */
		pos -= len;
		bpf_probe_read_kernel(&s->path[pos & (AMBER_PATH_MAX - 1)], len & AMBER_NAME_MAX,
				      name.name);
		pos -= 1;
		s->path[pos & (AMBER_PATH_MAX - 1)] = '/';
		s->path_pos = pos;
		dentry = parent;
	}
	pos = s->path_pos;
	if (pos >= AMBER_PATH_MAX) {
		pos = AMBER_PATH_MAX - 1;
		s->path[pos] = '/';
	}
	*truncated = s->path_truncated;
	return pos;
}

/* Append s->path[pos..AMBER_PATH_MAX) to the record at off; returns its length. */
static __always_inline __u32 path_append(struct amber_scratch *s, __u32 off, __u32 pos)
{
	__u32 len = AMBER_PATH_MAX - pos;

	if (len > AMBER_PATH_MAX)
		return 0;
	bpf_probe_read_kernel(&s->record[off & (AMBER_RECORD_MAX - 1)], len & (AMBER_PATH_MAX * 2 - 1),
			      &s->path[pos & (AMBER_PATH_MAX - 1)]);
	return len;
}

/* The file behind fd in the current task, or NULL. */
static __always_inline struct file *fd_file(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	struct file *f = NULL;

	if (fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/*
 * Syscall number and arguments as saved at entry; still valid at sys_exit.
 * regs is the tp_btf argument, a BTF pointer: plain loads.
 */
#if defined(__TARGET_ARCH_x86)
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#define SYSCALL_ARG1(regs) ((regs)->di)
#define SYSCALL_ARG2(regs) ((regs)->si)
#define SYSCALL_ARG3(regs) ((regs)->dx)
#define SYSCALL_ARG4(regs) ((regs)->r10)
/* the 32-bit user code segment (__USER32_CS): int 0x80, sysenter, ia32 binaries */
#define SYSCALL_IS_COMPAT(regs) ((regs)->cs == 0x23)
#elif defined(__TARGET_ARCH_arm64)
#define SYSCALL_NR(regs) ((regs)->syscallno)
#define SYSCALL_ARG1(regs) ((regs)->orig_x0)
#define SYSCALL_ARG2(regs) ((regs)->regs[1])
#define SYSCALL_ARG3(regs) ((regs)->regs[2])
#define SYSCALL_ARG4(regs) ((regs)->regs[3])
/* AArch32 tasks: PSR_MODE32_BIT in pstate */
#define SYSCALL_IS_COMPAT(regs) (((regs)->pstate & 0x10) != 0)
#else
#error "unsupported architecture"
#endif

#if defined(__TARGET_ARCH_x86)
#define NR_open 2
#define NR_creat 85
#define NR_openat 257
#define NR_openat2 437
#define NR_connect 42
#define NR_accept 43
#define NR_accept4 288
#elif defined(__TARGET_ARCH_arm64)
#define NR_open -1
#define NR_creat -1
#define NR_openat 56
#define NR_openat2 437
#define NR_connect 203
#define NR_accept 202
#define NR_accept4 242
#endif

#endif /* AMBER_BPF_H */
