/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Every record Amber's BPF programs write to the ring buffer.
 *
 * Shared by the kernel side (the bpf/ program files), the addon (native/) and, through
 * the offsets the addon reports, the TypeScript decoder (src/sensor/records.ts).
 * Rules: fixed-size fields, explicit padding, natural alignment, no bool.
 * A record is `struct amber_header` + the kind's fixed payload + a tail of
 * variable-length bytes whose lengths the payload gives, in the order listed.
 * `header.size` is the whole record's length.
 */
#ifndef AMBER_EVENTS_H
#define AMBER_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define AMBER_COMM_LEN 16
/* Longest path kept (exec filename, exePath, open path); longer ones are cut and flagged. */
#define AMBER_PATH_MAX 1024
/* Bytes of argv kept (NUL-separated); longer argv is cut and flagged argsTruncated. */
#define AMBER_ARGS_MAX 1024
/* Bytes of a DNS message kept; a longer message is parsed as far as it goes. */
#define AMBER_DNS_MAX 512
/* Largest record: header + exec payload + three tails. */
#define AMBER_RECORD_MAX 4096

/* The dispatch key everywhere: kernel, addon, TypeScript. */
enum amber_kind {
	AMBER_EXEC = 1,
	AMBER_EXIT = 2,
	AMBER_FORK = 3,
	AMBER_OPEN = 4,
	AMBER_CONNECT = 5,
	AMBER_ACCEPT = 6,
	AMBER_DNS = 7,
	/* Internal: cgroup v2 directory made/removed; feeds the container resolver. */
	AMBER_CGROUP = 8,
	AMBER_KIND_MAX = 9,
};

struct amber_header {
	__u8 kind;          /* enum amber_kind */
	__u8 flags;         /* per-kind bits, see AMBER_F_* */
	__u16 size;         /* whole record, bytes */
	__u32 pid;          /* thread group id (host pid namespace) */
	__u64 ts;           /* CLOCK_BOOTTIME ns; user space adds the epoch offset */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;    /* cgroup v2 id = inode of the cgroup directory */
	__u32 mntns;
	__u32 netns;
	char comm[AMBER_COMM_LEN];
};

/* header.flags bits; user space reads them through the addon's wireConstants() */
/* exec flags */
#define AMBER_F_UPPER_LAYER    (1 << 0)
#define AMBER_F_FILELESS       (1 << 1)
#define AMBER_F_ARGS_TRUNCATED (1 << 2)
/* exec and open: a path was cut at AMBER_PATH_MAX (or deeper than the walk goes) */
#define AMBER_F_PATH_TRUNCATED (1 << 3)
/* open flags */
#define AMBER_F_PATH_RESOLVED  (1 << 4) /* path built from the opened file's dentries */
/* dns flags */
#define AMBER_F_INGRESS        (1 << 5)
/* cgroup flags */
#define AMBER_F_CGROUP_RMDIR   (1 << 6)
/* exec: an interpreter runs the executed file (shebang script, binfmt_misc) */
#define AMBER_F_SCRIPT         (1 << 7)

/* Load-time setting amber_families: what the sys_exit dispatcher hands on. */
#define AMBER_FAMILY_FILE (1 << 0)
#define AMBER_FAMILY_NET  (1 << 1)

struct amber_exec {
	struct amber_header hdr;
	__u16 filename_len;
	__u16 exe_path_len;
	__u16 args_len;     /* bytes of NUL-separated argv in the tail */
	__u16 cwd_len;      /* AMBER_F_SCRIPT with a relative filename: the caller's cwd, else 0 */
	/* tail: filename, exe_path, args, cwd */
};

struct amber_exit {
	struct amber_header hdr;
	__s32 exit_code;
	__s32 signal;
};

struct amber_fork {
	struct amber_header hdr;
	__u32 child_pid;
	__u32 _pad;
};

struct amber_open {
	struct amber_header hdr;
	__s32 ret;          /* fd, or -errno */
	__u32 flags;        /* O_* as passed */
	__u32 mode;
	__u16 path_len;
	__u16 _pad;
	/* tail: path */
};

struct amber_sock {
	struct amber_header hdr;
	__s32 ret;
	__u8 proto;         /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;        /* 4 or 6 */
	__u16 sport;        /* host byte order */
	__u16 dport;        /* host byte order */
	__u16 _pad;
	__u32 _pad2;
	__u8 saddr[16];     /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
};

struct amber_dns {
	struct amber_header hdr;
	__u8 proto;         /* IPPROTO_UDP / IPPROTO_TCP (payload starts with a 2-byte length) */
	__u8 family;
	__u16 sport;
	__u16 dport;
	__u16 payload_len;  /* bytes in the tail */
	__u8 saddr[16];
	__u8 daddr[16];
	/* tail: DNS message as captured */
};

struct amber_cgroup {
	struct amber_header hdr;
	__u64 id;           /* the cgroup's id (inode) */
	__u16 path_len;
	__u16 _pad;
	__u32 _pad2;
	/* tail: path relative to the cgroup v2 root, e.g. /libpod_parent/libpod-<id> */
};

#endif /* AMBER_EVENTS_H */
