// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * An incident response: cut a container off the network. Attached to the
 * container's cgroup v2 directory in both directions, every packet of its
 * sockets is dropped (a cgroup_skb program returning 0 drops). Its own
 * object, not linked with the sensor's: a cut is pinned and outlives the
 * agent, and must not hold the sensor's maps. Drops are counted per
 * direction for the incident's log.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define NETCUT_INGRESS 0
#define NETCUT_EGRESS 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} netcut_drops SEC(".maps");

static __always_inline int drop(__u32 direction)
{
	__u64 *count = bpf_map_lookup_elem(&netcut_drops, &direction);

	if (count)
		*count += 1;
	return 0;
}

SEC("cgroup_skb/ingress")
int amber_netcut_ingress(struct __sk_buff *skb)
{
	return drop(NETCUT_INGRESS);
}

SEC("cgroup_skb/egress")
int amber_netcut_egress(struct __sk_buff *skb)
{
	return drop(NETCUT_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
