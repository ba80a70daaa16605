// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * cgroup v2 directories as they are made and removed, with their paths, so
 * user space can name the container of a cgroup id even when the container
 * is gone before anyone looks (short-lived containers).
 */
#include "amber.bpf.h"

static __always_inline void on_cgroup(struct cgroup *cgrp, const char *path, __u8 flags)
{
	struct amber_scratch *s;
	struct amber_cgroup *e;
	long n;

	/* hierarchy 0 is cgroup v2; the v1 hierarchies of a hybrid host are not ids we see */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return;
	s = scratch_get();
	if (!s)
		return;
	e = (void *)s->record;
	header_fill(&e->hdr, AMBER_CGROUP);
	e->hdr.flags = flags;
	e->id = BPF_CORE_READ(cgrp, kn, id);
	e->_pad = 0;
	e->_pad2 = 0;
	n = bpf_probe_read_kernel_str(s->record + sizeof(*e), AMBER_PATH_MAX, path);
	n = n > 0 ? n - 1 : 0;
	e->path_len = n;
	record_submit(e, sizeof(*e) + (n & (AMBER_PATH_MAX - 1)));
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(amber_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	on_cgroup(cgrp, path, 0);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(amber_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	on_cgroup(cgrp, path, AMBER_F_CGROUP_RMDIR);
	return 0;
}
