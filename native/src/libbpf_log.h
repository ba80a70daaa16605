// libbpf's messages, kept so that a failed load can say what libbpf said.
#pragma once
#include <string>

namespace amber {

// Route libbpf's print callback here (idempotent).
void LibbpfLogInstall();
// Forget what was kept (before a load).
void LibbpfLogClear();
// The warnings and errors kept since the last clear, at most the last few KiB.
std::string LibbpfLogText();

}  // namespace amber
