// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The settings every program file reads; the addon sets them between open and load. */
#include "amber.bpf.h"

const volatile __u32 amber_ignore_tgid = 0;
const volatile __u64 amber_wakeup_bytes = 1 << 20;
const volatile __u8 amber_ovl_by_inode_size = 0;
const volatile __u32 amber_families = 0;

char LICENSE[] SEC("license") = "Dual BSD/GPL";
