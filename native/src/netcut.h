// The network cut, an incident response: its own BPF object (bpf/netcut.bpf.c),
// attached to one container's cgroup and pinned on bpffs so that it outlives
// the agent. Separate from the sensor: it shares no map or link with it.
#pragma once
#include <napi.h>

namespace amber {

// { attach(cgroupFd, pinDir) -> links, inspect(pinDir) -> links and drop counts }
Napi::Object DefineNetcut(Napi::Env env);

}  // namespace amber
