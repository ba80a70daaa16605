// A process's memory as an ELF core file (ET_CORE), written off the JS thread:
// every thread stopped with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT), its
// registers read, then the caller's onStopped hook (the cgroup freezer runs
// there), then /proc/<pid>/maps, auxv and every readable mapping copied from
// /proc/<pid>/mem into one PT_LOAD each, and the threads detached, always.
#pragma once
#include <napi.h>

namespace amber {

// { dump(pid, fd, options, onStopped?) -> Promise<result> }; see src/incident/binding.ts.
Napi::Object DefineCore(Napi::Env env);

}  // namespace amber
