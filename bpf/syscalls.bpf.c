// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The one program on the sys_exit raw tracepoint: it runs for every syscall
 * of the node, so it is one program (each attached program costs every
 * syscall an invocation; measured ~8% of an open/close loop) that decodes the
 * arguments of the syscalls Amber records and hands them to their family
 * (file.bpf.c, net.bpf.c). tp_btf needs no tracefs and sees the result and
 * the saved arguments together.
 */
#include "amber.bpf.h"

#define AMBER_O_CREAT 0100
#define AMBER_O_WRONLY 01
#define AMBER_O_TRUNC 01000

extern int amber_file_open(__u64 upath_addr, __u32 flags, __u32 mode, long ret);
extern int amber_net_connect(__u32 fd, __u64 uaddr_addr, long ret);
extern int amber_net_accept(long ret);

SEC("tp_btf/sys_exit")
int BPF_PROG(amber_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = SYSCALL_NR(regs);

	/* nearly every syscall is not ours: the number alone decides, before anything else is read */
	if (nr != NR_openat && nr != NR_open && nr != NR_creat && nr != NR_openat2 && nr != NR_connect &&
	    nr != NR_accept && nr != NR_accept4)
		return 0;
	/* 32-bit (compat) syscalls use other numbers: not decoded here, never misread */
	if (SYSCALL_IS_COMPAT(regs))
		return 0;
	if (amber_families & AMBER_FAMILY_FILE) {
		if (nr == NR_openat)
			return amber_file_open(SYSCALL_ARG2(regs), SYSCALL_ARG3(regs), SYSCALL_ARG4(regs), ret);
		if (nr == NR_open)
			return amber_file_open(SYSCALL_ARG1(regs), SYSCALL_ARG2(regs), SYSCALL_ARG3(regs), ret);
		if (nr == NR_creat)
			return amber_file_open(SYSCALL_ARG1(regs), AMBER_O_CREAT | AMBER_O_WRONLY | AMBER_O_TRUNC,
					       SYSCALL_ARG2(regs), ret);
		if (nr == NR_openat2) {
			struct open_how how = {};

			bpf_probe_read_user(&how, sizeof(how), (void *)SYSCALL_ARG3(regs));
			return amber_file_open(SYSCALL_ARG2(regs), how.flags, how.mode, ret);
		}
	}
	if (amber_families & AMBER_FAMILY_NET) {
		if (nr == NR_connect)
			return amber_net_connect(SYSCALL_ARG1(regs), SYSCALL_ARG2(regs), ret);
		if (nr == NR_accept || nr == NR_accept4)
			return amber_net_accept(ret);
	}
	return 0;
}
