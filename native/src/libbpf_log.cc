#include "libbpf_log.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>

namespace amber {
namespace {

constexpr size_t kKeepBytes = 8192;
std::mutex log_mutex;
std::string log_text;

int OnLibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  char line[1024];
  int n = vsnprintf(line, sizeof(line), fmt, args);
  if (n <= 0) return n;
  std::lock_guard<std::mutex> lock(log_mutex);
  log_text.append(line);
  if (log_text.size() > kKeepBytes) log_text.erase(0, log_text.size() - kKeepBytes);
  return n;
}

}  // namespace

void LibbpfLogInstall() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(OnLibbpfPrint); });
}

void LibbpfLogClear() {
  std::lock_guard<std::mutex> lock(log_mutex);
  log_text.clear();
}

std::string LibbpfLogText() {
  std::lock_guard<std::mutex> lock(log_mutex);
  return log_text;
}

}  // namespace amber
