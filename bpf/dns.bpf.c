// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * DNS from cgroup_skb programs on the cgroup v2 root: every socket of the
 * node passes here with its cgroup. Recorded from the client's side: queries
 * on egress (to port 53), responses on ingress (from port 53), so a lookup on
 * loopback is not seen twice. The message is parsed in user space.
 */
#include "amber.bpf.h"

#define AMBER_ETH_P_IP 0x0800
#define AMBER_ETH_P_IPV6 0x86DD
#define AMBER_IP_MF 0x2000
#define AMBER_IP_OFFSET 0x1FFF
#define DNS_PORT 53

/* Who owns the socket, taken at its first egress (process context); read at ingress. */
struct sock_owner {
	struct amber_header hdr;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_owner);
} dns_owner SEC(".maps");

struct l4 {
	__u8 proto;
	__u8 family;
	__u16 sport;
	__u16 dport;
	__u32 payload_off;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int parse(struct __sk_buff *skb, struct l4 *p)
{
	__u32 off;

	if (skb->protocol == bpf_htons(AMBER_ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return -1;
		if (bpf_ntohs(ip.frag_off) & (AMBER_IP_MF | AMBER_IP_OFFSET))
			return -1;
		p->family = 4;
		p->proto = ip.protocol;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		off = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(AMBER_ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return -1;
		p->family = 6;
		p->proto = ip6.nexthdr; /* extension headers are not followed */
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		off = sizeof(ip6);
	} else {
		return -1;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)) < 0)
			return -1;
		p->sport = bpf_ntohs(udp.source);
		p->dport = bpf_ntohs(udp.dest);
		off += sizeof(udp);
	} else if (p->proto == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) < 0)
			return -1;
		p->sport = bpf_ntohs(tcp.source);
		p->dport = bpf_ntohs(tcp.dest);
		off += tcp.doff * 4;
	} else {
		return -1;
	}
	p->payload_off = off;
	return 0;
}

static __always_inline void on_packet(struct __sk_buff *skb, int ingress)
{
	struct amber_scratch *s;
	struct sock_owner *owner;
	struct amber_dns *e;
	struct bpf_sock *sk;
	struct l4 p = {};
	__u32 len;

	if (parse(skb, &p) < 0)
		return;
	if (ingress ? p.sport != DNS_PORT : p.dport != DNS_PORT)
		return;
	if (skb->len <= p.payload_off)
		return; /* TCP handshake and bare ACKs */
	len = skb->len - p.payload_off;
	if (len > AMBER_DNS_MAX)
		len = AMBER_DNS_MAX;

	sk = skb->sk;
	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return;
	owner = bpf_sk_storage_get(&dns_owner, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!owner)
		return;
	if (!ingress && owner->hdr.kind == 0)
		header_fill_probed(&owner->hdr, AMBER_DNS);
	if (owner->hdr.kind == 0)
		return; /* a response to a socket never seen sending */
	if (ignored_tgid(owner->hdr.pid))
		return;

	s = scratch_get();
	if (!s)
		return;
	e = (void *)s->record;
	__builtin_memcpy(&e->hdr, &owner->hdr, sizeof(e->hdr));
	e->hdr.ts = bpf_ktime_get_boot_ns();
	e->hdr.flags = ingress ? AMBER_F_INGRESS : 0;
	e->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
	e->proto = p.proto;
	e->family = p.family;
	e->sport = p.sport;
	e->dport = p.dport;
	__builtin_memcpy(e->saddr, p.saddr, 16);
	__builtin_memcpy(e->daddr, p.daddr, 16);
	len = AMBER_BOUND(len, AMBER_DNS_MAX * 2 - 1);
	if (len == 0 || bpf_skb_load_bytes(skb, p.payload_off, s->record + sizeof(*e), len) < 0)
		return;
	e->payload_len = len;
	record_submit(e, sizeof(*e) + len);
}

SEC("cgroup_skb/egress")
int amber_dns_egress(struct __sk_buff *skb)
{
	on_packet(skb, 0);
	return 1;
}

SEC("cgroup_skb/ingress")
int amber_dns_ingress(struct __sk_buff *skb)
{
	on_packet(skb, 1);
	return 1;
}
