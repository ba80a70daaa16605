// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The settings every program file reads; the addon sets them between open and load. */
#include "amber.bpf.h"

const volatile __u64 amber_wakeup_bytes = 1 << 20;
const volatile __u32 amber_fill_check_bytes = 0;
const volatile __u8 amber_ovl_by_inode_size = 0;
const volatile __u32 amber_families = 0;

volatile __u32 amber_self_tgid = 0;

/*
 * Never attached: the addon runs it once with BPF_PROG_TEST_RUN, which runs a
 * raw_tp program in the caller's own context, so the helper returns the
 * agent's tgid in the kernel's (host's) PID namespace, whatever namespace the
 * agent runs in and whichever /proc it sees.
 */
SEC("raw_tp")
int amber_self(void *ctx)
{
	amber_self_tgid = bpf_get_current_pid_tgid() >> 32;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
