// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* connect and accept, taken at syscall exit: the socket has its addresses by then. */
#include "amber.bpf.h"

#define AMBER_AF_INET 2
#define AMBER_AF_INET6 10
#define AMBER_S_IFMT 00170000
#define AMBER_S_IFSOCK 0140000

/* The socket behind fd, when it is a TCP or UDP socket of IPv4/IPv6. */
static __always_inline struct sock *inet_sock_of(__u32 fd)
{
	struct file *f = fd_file(fd);
	struct socket *sock;
	struct sock *sk;
	__u16 family, proto;

	if (!f)
		return NULL;
	/* private_data is a socket only for socket files */
	if ((BPF_CORE_READ(f, f_inode, i_mode) & AMBER_S_IFMT) != AMBER_S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return NULL;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	proto = BPF_CORE_READ(sk, sk_protocol);
	if (family != AMBER_AF_INET && family != AMBER_AF_INET6)
		return NULL;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return NULL;
	return sk;
}

/* Local address from the socket; with remote != 0 the peer too. */
static __always_inline void sock_addrs(struct amber_sock *e, struct sock *sk, int remote)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	e->proto = BPF_CORE_READ(sk, sk_protocol);
	e->family = family == AMBER_AF_INET6 ? 6 : 4;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (family == AMBER_AF_INET6) {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		if (remote)
			BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
	} else {
		BPF_CORE_READ_INTO((__u32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
		if (remote)
			BPF_CORE_READ_INTO((__u32 *)e->daddr, sk, __sk_common.skc_daddr);
	}
	if (remote)
		e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline struct amber_sock *sock_record(__u8 kind, long ret, struct task_struct *task)
{
	struct amber_scratch *s = scratch_get();
	struct amber_sock *e;

	if (!s)
		return NULL;
	e = (void *)s->record;
	__builtin_memset((void *)e + sizeof(e->hdr), 0, sizeof(*e) - sizeof(e->hdr));
	header_fill_task(&e->hdr, kind, task);
	e->ret = ret;
	return e;
}

/*
 * connect, from the sys_exit dispatcher (syscalls.bpf.c): the destination as
 * the process asked (the socket may already be reset on failure).
 */
__noinline int amber_net_connect(__u32 fd, __u64 uaddr_addr, long ret)
{
	void *uaddr = (void *)uaddr_addr;
	struct task_struct *task = bpf_get_current_task_btf();
	struct sockaddr_in6 sa = {};
	struct amber_sock *e;
	struct sock *sk;

	if (ignored_tgid(task->tgid))
		return 0;
	sk = inet_sock_of(fd);
	if (!sk)
		return 0;
	/* read the short form first: the caller's buffer may be only that long */
	if (bpf_probe_read_user(&sa, sizeof(struct sockaddr_in), uaddr) < 0)
		return 0;
	if (sa.sin6_family == AMBER_AF_INET6 && bpf_probe_read_user(&sa, sizeof(sa), uaddr) < 0)
		return 0;
	if (sa.sin6_family != AMBER_AF_INET && sa.sin6_family != AMBER_AF_INET6)
		return 0; /* AF_UNSPEC disconnects a UDP socket */
	e = sock_record(AMBER_CONNECT, ret, task);
	if (!e)
		return 0;
	sock_addrs(e, sk, 0);
	e->dport = bpf_ntohs(sa.sin6_port);
	if (sa.sin6_family == AMBER_AF_INET6) {
		e->family = 6;
		__builtin_memcpy(e->daddr, &sa.sin6_addr, 16);
	} else {
		struct sockaddr_in *in = (void *)&sa;

		e->family = 4;
		__builtin_memcpy(e->daddr, &in->sin_addr, 4);
	}
	record_submit(e, sizeof(*e));
	return 0;
}

/*
 * accept and accept4, from the sys_exit dispatcher: the new socket holds both
 * ends. Failed accepts are left out (non-blocking servers flood EAGAIN).
 */
__noinline int amber_net_accept(long ret)
{
	struct task_struct *task;
	struct amber_sock *e;
	struct sock *sk;

	if (ret < 0)
		return 0;
	task = bpf_get_current_task_btf();
	if (ignored_tgid(task->tgid))
		return 0;
	sk = inet_sock_of(ret);
	if (!sk)
		return 0;
	e = sock_record(AMBER_ACCEPT, ret, task);
	if (!e)
		return 0;
	sock_addrs(e, sk, 1);
	record_submit(e, sizeof(*e));
	return 0;
}
