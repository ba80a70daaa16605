#include "core_dump.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/procfs.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace amber {
namespace {

#if defined(__x86_64__)
constexpr uint16_t kMachine = EM_X86_64;
using FpRegs = struct user_fpregs_struct;
uint64_t Pc(const user_regs_struct& r) { return r.rip; }
uint64_t Sp(const user_regs_struct& r) { return r.rsp; }
#elif defined(__aarch64__)
constexpr uint16_t kMachine = EM_AARCH64;
using FpRegs = struct user_fpsimd_struct;
uint64_t Pc(const user_regs_struct& r) { return r.pc; }
uint64_t Sp(const user_regs_struct& r) { return r.sp; }
#else
#error "core dumps support x86_64 and arm64"
#endif
static_assert(sizeof(user_regs_struct) == sizeof(elf_gregset_t), "NT_PRSTATUS carries the registers as PTRACE_GETREGSET gives them");

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

std::string Hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

struct Options {
  uint64_t maxBytes = 0;
  int stopTimeoutMs = 5000;
  int gateTimeoutMs = 60000;
  size_t chunkBytes = 8 << 20;
};

struct Thread {
  pid_t tid = 0;
  bool attached = false;  // seized, and not gone
  bool stopped = false;   // in a ptrace stop: detach it explicitly
  int signal = 0;         // a signal-delivery stop's signal, handed back on detach
  user_regs_struct regs{};
  FpRegs fpregs{};
  bool fpValid = false;
  std::string xstate;  // x86 NT_X86_XSTATE (AVX and later registers), empty when unavailable
};

struct Region {
  uint64_t start = 0, end = 0, offset = 0, inode = 0;
  std::string perms, dev, path;
  bool planned = false;
  uint64_t fileOffset = 0;  // where its bytes go in the core
  uint64_t dumped = 0;      // bytes copied, a prefix of the region
  std::string skipped;      // why the rest (or all) of it is not in the core
};

// onStopped's answer: the JS thread resumes the dump (or aborts it with a reason).
struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::string error;
  void Open(std::string err) {
    std::lock_guard<std::mutex> lock(mutex);
    if (done) return;
    done = true;
    error = std::move(err);
    cv.notify_all();
  }
};

struct ThreadInfo {
  pid_t tid;
  uint64_t pc, sp;
};

struct Psinfo {
  char state = 'R';
  int ppid = 0, pgrp = 0, sid = 0, nice = 0;
  unsigned long flags = 0;
  unsigned uid = 0, gid = 0;
  std::string comm, args;
};

// Reads a whole (procfs) file under dirfd; false with errno set on failure.
bool ReadAll(int dirfd, const char* name, std::string& out, size_t limit) {
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return false;
  out.clear();
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      errno = err;
      return false;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) {
      close(fd);
      errno = EFBIG;
      return false;
    }
  }
  close(fd);
  return true;
}

bool PwriteAll(int fd, const char* data, size_t size, uint64_t at) {
  while (size > 0) {
    ssize_t n = pwrite(fd, data, size, static_cast<off_t>(at));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
    at += static_cast<uint64_t>(n);
  }
  return true;
}

bool IsZero(const char* p, size_t n) { return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0); }

void AppendNote(std::string& out, const char* name, uint32_t type, const void* desc, size_t size) {
  Elf64_Nhdr h{};
  h.n_namesz = static_cast<Elf64_Word>(strlen(name) + 1);
  h.n_descsz = static_cast<Elf64_Word>(size);
  h.n_type = type;
  out.append(reinterpret_cast<const char*>(&h), sizeof h);
  out.append(name, h.n_namesz);
  out.append((4 - h.n_namesz % 4) % 4, '\0');
  out.append(static_cast<const char*>(desc), size);
  out.append((4 - size % 4) % 4, '\0');
}

// Writes data at `at`, leaving all-zero pages as holes (the file was created
// empty); 0 or the errno of the failed write.
int WriteSparse(int fd, const char* data, size_t size, uint64_t at, uint64_t pageSize) {
  size_t runStart = 0;
  bool inRun = false;
  for (size_t p = 0; p < size; p += pageSize) {
    bool zero = IsZero(data + p, std::min<size_t>(pageSize, size - p));
    if (!zero && !inRun) {
      runStart = p;
      inRun = true;
    } else if (zero && inRun) {
      if (!PwriteAll(fd, data + runStart, p - runStart, at + runStart)) return errno;
      inRun = false;
    }
  }
  if (inRun && !PwriteAll(fd, data + runStart, size - runStart, at + runStart)) return errno;
  return 0;
}

// Two buffers: a second thread writes one chunk to the core while the next is
// read from the process (reading and writing each take about as long).
class ChunkWriter {
 public:
  ChunkWriter(int fd, size_t chunkBytes, uint64_t pageSize) : fd_(fd), pageSize_(pageSize) {
    for (Slot& s : slots_) s.buf.reset(new char[chunkBytes]);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ChunkWriter() { Finish(); }

  // The buffer to read the next chunk into; waits while both are being written.
  char* Acquire() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return !slots_[next_].full; });
    return slots_[next_].buf.get();
  }

  // Queues the buffer Acquire gave for writing at `at`; false once a write has failed.
  bool Submit(size_t size, uint64_t at) {
    std::lock_guard<std::mutex> lock(mutex_);
    Slot& s = slots_[next_];
    s.size = size;
    s.at = at;
    s.full = true;
    next_ ^= 1;
    cv_.notify_all();
    return err_ == 0;
  }

  // Waits for every queued write; the first failed write's errno, or 0.
  int Finish() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    return err_;
  }

 private:
  struct Slot {
    std::unique_ptr<char[]> buf;
    size_t size = 0;
    uint64_t at = 0;
    bool full = false;
  };

  void Loop() {
    for (size_t i = 0;; i ^= 1) {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return slots_[i].full || stop_; });
      if (!slots_[i].full) return;  // stopped, and everything queued is written
      Slot& s = slots_[i];
      bool failed = err_ != 0;
      lock.unlock();
      int err = failed ? 0 : WriteSparse(fd_, s.buf.get(), s.size, s.at, pageSize_);
      lock.lock();
      if (err != 0 && err_ == 0) err_ = err;
      s.full = false;
      cv_.notify_all();
    }
  }

  int fd_;
  uint64_t pageSize_;
  Slot slots_[2];
  size_t next_ = 0;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  int err_ = 0;
  std::thread thread_;
};

class Dump {
 public:
  Dump(pid_t pid, int fd, Options options) : pid_(pid), fd_(fd), options_(options) {}
  ~Dump() {
    if (memFd_ >= 0) close(memFd_);
    if (procFd_ >= 0) close(procFd_);
  }

  // Runs on a thread of its own that ends when it returns: the kernel detaches
  // whatever that thread still traces when it exits (exit_ptrace), so no path
  // leaves a thread of the process stopped, even one that never reached its stop.
  void Run(const std::function<bool(const std::vector<ThreadInfo>&, std::string&)>& gate) {
    Clock::time_point t0 = Clock::now();
    bool ok = Attach();
    stopMs_ = MsSince(t0);
    if (ok) {
      Clock::time_point t1 = Clock::now();
      std::vector<ThreadInfo> info;
      for (const Thread& t : threads_) info.push_back({t.tid, Pc(t.regs), Sp(t.regs)});
      std::string why;
      ok = gate(info, why);
      if (!ok) Fail(why, ECANCELED);
      gateMs_ = MsSince(t1);
    }
    if (ok) {
      Clock::time_point t2 = Clock::now();
      ok = ReadProcess() && Write();
      copyMs_ = MsSince(t2);
    }
    DetachAll();
  }

  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  int err() const { return err_; }

  Napi::Object Result(Napi::Env env) const {
    Napi::Object out = Napi::Object::New(env);
    out.Set("bytes", Napi::Number::New(env, static_cast<double>(fileSize_)));
    out.Set("dumpedBytes", Napi::Number::New(env, static_cast<double>(dumpedBytes_)));
    out.Set("comm", Napi::String::New(env, psinfo_.comm));
    Napi::Array threads = Napi::Array::New(env, threads_.size());
    for (size_t i = 0; i < threads_.size(); i++) {
      Napi::Object t = Napi::Object::New(env);
      t.Set("tid", Napi::Number::New(env, threads_[i].tid));
      t.Set("pc", Napi::String::New(env, Hex(Pc(threads_[i].regs))));
      t.Set("sp", Napi::String::New(env, Hex(Sp(threads_[i].regs))));
      t.Set("signal", Napi::Number::New(env, threads_[i].signal));
      threads[i] = t;
    }
    out.Set("threads", threads);
    Napi::Array regions = Napi::Array::New(env, regions_.size());
    for (size_t i = 0; i < regions_.size(); i++) {
      const Region& r = regions_[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("start", Napi::String::New(env, Hex(r.start)));
      o.Set("end", Napi::String::New(env, Hex(r.end)));
      o.Set("perms", Napi::String::New(env, r.perms));
      o.Set("offset", Napi::Number::New(env, static_cast<double>(r.offset)));
      o.Set("dev", Napi::String::New(env, r.dev));
      o.Set("inode", Napi::Number::New(env, static_cast<double>(r.inode)));
      o.Set("path", Napi::String::New(env, r.path));
      o.Set("dumped", Napi::Number::New(env, static_cast<double>(r.dumped)));
      if (!r.skipped.empty()) o.Set("skipped", Napi::String::New(env, r.skipped));
      regions[i] = o;
    }
    out.Set("regions", regions);
    out.Set("stopMs", Napi::Number::New(env, stopMs_));
    out.Set("gateMs", Napi::Number::New(env, gateMs_));
    out.Set("copyMs", Napi::Number::New(env, copyMs_));
    return out;
  }

 private:
  bool Fail(const std::string& what, int err) {
    if (error_.empty()) {
      error_ = what;
      err_ = err;
    }
    return false;
  }
  bool FailErrno(const std::string& what) {
    int err = errno;
    return Fail(what + ": " + strerror(err), err);
  }

  char TaskState(pid_t tid) {
    std::string stat;
    std::string name = "task/" + std::to_string(tid) + "/stat";
    if (!ReadAll(procFd_, name.c_str(), stat, 4096)) return 0;
    size_t close = stat.rfind(')');
    return close == std::string::npos || close + 2 >= stat.size() ? 0 : stat[close + 2];
  }

  bool ListTasks(std::vector<pid_t>& tids) {
    int fd = openat(procFd_, "task", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return FailErrno("cannot list the threads of process " + std::to_string(pid_));
    DIR* dir = fdopendir(fd);
    if (dir == nullptr) {
      close(fd);
      return FailErrno("cannot list the threads of process " + std::to_string(pid_));
    }
    tids.clear();
    while (struct dirent* e = readdir(dir)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      tids.push_back(static_cast<pid_t>(strtol(e->d_name, nullptr, 10)));
    }
    closedir(dir);
    return true;
  }

  bool WaitStop(Thread& t, Clock::time_point deadline) {
    long sleepNs = 50000;
    for (;;) {
      int status = 0;
      pid_t r = waitpid(t.tid, &status, __WALL | WNOHANG);
      if (r == t.tid) {
        if (WIFSTOPPED(status)) {
          t.stopped = true;
          // PTRACE_EVENT_STOP: our interrupt or a group stop, nothing to hand back;
          // otherwise a signal was being delivered and must be on detach.
          t.signal = (status >> 16) == PTRACE_EVENT_STOP ? 0 : WSTOPSIG(status);
        } else {
          t.attached = false;  // exited meanwhile
        }
        return true;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == ECHILD) {
          t.attached = false;
          return true;
        }
        return FailErrno("waitpid for thread " + std::to_string(t.tid));
      }
      if (Clock::now() > deadline) {
        char state = TaskState(t.tid);
        if (state == 0 || state == 'Z' || state == 'X') {
          t.attached = false;
          return true;
        }
        return Fail("thread " + std::to_string(t.tid) + " of process " + std::to_string(pid_) + " did not stop within " +
                        std::to_string(options_.stopTimeoutMs) + " ms (state " + std::string(1, state) +
                        "; a task frozen by a cgroup v1 freezer or in uninterruptible sleep cannot be stopped)",
                    ETIMEDOUT);
      }
      struct timespec ts = {0, sleepNs};
      nanosleep(&ts, nullptr);
      sleepNs = std::min(sleepNs * 2, 5000000L);
    }
  }

  // Seizes and interrupts every thread, again until a listing shows none new:
  // once all known threads are stopped none can start another.
  bool Attach() {
    if (pid_ <= 0) return Fail("pid must be a positive number", EINVAL);
    if (pid_ == getpid()) return Fail("refusing to dump the agent's own process", EINVAL);
    std::string dir = "/proc/" + std::to_string(pid_);
    procFd_ = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (procFd_ < 0) {
      if (errno == ENOENT) return Fail("process " + std::to_string(pid_) + " does not exist", ESRCH);
      return FailErrno("cannot open " + dir);
    }
    // Opened before anything else: the fd stays bound to this process's memory.
    memFd_ = openat(procFd_, "mem", O_RDONLY | O_CLOEXEC);
    if (memFd_ < 0) return FailErrno("cannot open " + dir + "/mem");
    Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(options_.stopTimeoutMs);
    std::vector<pid_t> tids;
    for (int round = 0;; round++) {
      if (round > 1000) return Fail("process " + std::to_string(pid_) + " keeps starting threads", EAGAIN);
      if (!ListTasks(tids)) return false;
      size_t before = threads_.size();
      for (pid_t tid : tids) {
        bool known = std::any_of(threads_.begin(), threads_.end(), [tid](const Thread& t) { return t.tid == tid; });
        if (known) continue;
        char state = TaskState(tid);
        if (state == 0 || state == 'Z' || state == 'X') continue;  // a zombie (leader after pthread_exit) never stops
        if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
          if (errno == ESRCH) continue;
          return FailErrno("ptrace(PTRACE_SEIZE) of thread " + std::to_string(tid) + " of process " + std::to_string(pid_));
        }
        Thread t;
        t.tid = tid;
        t.attached = true;
        threads_.push_back(t);
        if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 && errno != ESRCH) {
          return FailErrno("ptrace(PTRACE_INTERRUPT) of thread " + std::to_string(tid));
        }
      }
      for (size_t i = before; i < threads_.size(); i++) {
        if (!WaitStop(threads_[i], deadline)) return false;
      }
      if (threads_.size() == before) break;
    }
    threads_.erase(std::remove_if(threads_.begin(), threads_.end(), [](const Thread& t) { return !t.attached; }),
                   threads_.end());
    if (threads_.empty()) return Fail("process " + std::to_string(pid_) + " exited before it could be stopped", ESRCH);
    // The leader first: a debugger takes the first NT_PRSTATUS as the current thread.
    std::stable_partition(threads_.begin(), threads_.end(), [this](const Thread& t) { return t.tid == pid_; });
    for (Thread& t : threads_) {
      struct iovec io = {&t.regs, sizeof t.regs};
      if (ptrace(PTRACE_GETREGSET, t.tid, reinterpret_cast<void*>(NT_PRSTATUS), &io) != 0) {
        return FailErrno("ptrace(PTRACE_GETREGSET) of thread " + std::to_string(t.tid));
      }
      io = {&t.fpregs, sizeof t.fpregs};
      t.fpValid = ptrace(PTRACE_GETREGSET, t.tid, reinterpret_cast<void*>(NT_PRFPREG), &io) == 0 && io.iov_len == sizeof t.fpregs;
#if defined(__x86_64__)
      std::string xstate(16384, '\0');
      io = {xstate.data(), xstate.size()};
      if (ptrace(PTRACE_GETREGSET, t.tid, reinterpret_cast<void*>(NT_X86_XSTATE), &io) == 0) {
        xstate.resize(io.iov_len);
        t.xstate = std::move(xstate);
      }
#endif
    }
    return true;
  }

  void DetachAll() {
    for (Thread& t : threads_) {
      if (t.attached && t.stopped) ptrace(PTRACE_DETACH, t.tid, nullptr, reinterpret_cast<void*>(static_cast<long>(t.signal)));
      t.attached = false;
    }
  }

  bool ReadProcess() {
    std::string maps;
    if (!ReadAll(procFd_, "maps", maps, 256u << 20)) return FailErrno("cannot read /proc/" + std::to_string(pid_) + "/maps");
    size_t pos = 0;
    while (pos < maps.size()) {
      size_t nl = maps.find('\n', pos);
      if (nl == std::string::npos) nl = maps.size();
      std::string line = maps.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.empty()) continue;
      unsigned long long start, end, offset, inode;
      char perms[8] = {0}, dev[32] = {0};
      int consumed = 0;
      if (sscanf(line.c_str(), "%llx-%llx %7s %llx %31s %llu%n", &start, &end, perms, &offset, dev, &inode, &consumed) != 6) {
        return Fail("cannot parse a line of /proc/" + std::to_string(pid_) + "/maps: " + line, EINVAL);
      }
      Region r;
      r.start = start;
      r.end = end;
      r.perms = perms;
      r.offset = offset;
      r.dev = dev;
      r.inode = inode;
      size_t at = static_cast<size_t>(consumed);
      while (at < line.size() && line[at] == ' ') at++;
      r.path = line.substr(at);
      regions_.push_back(std::move(r));
    }
    // A process that exited meanwhile (SIGKILL reaches even a stopped one) has no mappings left.
    if (regions_.empty()) return Fail("process " + std::to_string(pid_) + " exited before its memory could be read", ESRCH);
    if (!ReadAll(procFd_, "auxv", auxv_, 1 << 20)) return FailErrno("cannot read /proc/" + std::to_string(pid_) + "/auxv");

    std::string stat, status, cmdline;
    if (!ReadAll(procFd_, "stat", stat, 65536) || !ReadAll(procFd_, "status", status, 1 << 20) ||
        !ReadAll(procFd_, "cmdline", cmdline, 1 << 20)) {
      return FailErrno("cannot read /proc/" + std::to_string(pid_));
    }
    size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) {
      return Fail("cannot parse /proc/" + std::to_string(pid_) + "/stat", EINVAL);
    }
    psinfo_.comm = stat.substr(open + 1, close - open - 1);
    // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime priority nice
    long fields[17] = {0};
    char state = 'R';
    sscanf(stat.c_str() + close + 1, " %c %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld", &state, &fields[0],
           &fields[1], &fields[2], &fields[3], &fields[4], &fields[5], &fields[6], &fields[7], &fields[8], &fields[9],
           &fields[10], &fields[11], &fields[12], &fields[13], &fields[14], &fields[15]);
    psinfo_.state = state;
    psinfo_.ppid = static_cast<int>(fields[0]);
    psinfo_.pgrp = static_cast<int>(fields[1]);
    psinfo_.sid = static_cast<int>(fields[2]);
    psinfo_.flags = static_cast<unsigned long>(fields[5]);
    psinfo_.nice = static_cast<int>(fields[15]);
    size_t uid = status.find("\nUid:"), gid = status.find("\nGid:");
    if (uid != std::string::npos) psinfo_.uid = static_cast<unsigned>(strtoul(status.c_str() + uid + 5, nullptr, 10));
    if (gid != std::string::npos) psinfo_.gid = static_cast<unsigned>(strtoul(status.c_str() + gid + 5, nullptr, 10));
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    while (!cmdline.empty() && cmdline.back() == ' ') cmdline.pop_back();
    psinfo_.args = cmdline;
    return true;
  }

  std::string Notes(uint64_t pageSize) const {
    std::string notes;
    struct elf_prpsinfo ps;
    memset(&ps, 0, sizeof ps);
    static const char kStates[] = "RSDTZW";
    const char* at = strchr(kStates, psinfo_.state);
    ps.pr_state = static_cast<char>(at != nullptr ? at - kStates : 0);
    ps.pr_sname = psinfo_.state;
    ps.pr_zomb = psinfo_.state == 'Z';
    ps.pr_nice = static_cast<char>(psinfo_.nice);
    ps.pr_flag = psinfo_.flags;
    ps.pr_uid = psinfo_.uid;
    ps.pr_gid = psinfo_.gid;
    ps.pr_pid = pid_;
    ps.pr_ppid = psinfo_.ppid;
    ps.pr_pgrp = psinfo_.pgrp;
    ps.pr_sid = psinfo_.sid;
    strncpy(ps.pr_fname, psinfo_.comm.c_str(), sizeof ps.pr_fname - 1);
    strncpy(ps.pr_psargs, psinfo_.args.c_str(), sizeof ps.pr_psargs - 1);

    // NT_FILE: count, page size, (start, end, offset in pages) per file mapping, then their names.
    std::vector<uint64_t> files = {0, pageSize};
    std::string names;
    for (const Region& r : regions_) {
      if (r.inode == 0 || r.path.empty()) continue;
      files.push_back(r.start);
      files.push_back(r.end);
      files.push_back(r.offset / pageSize);
      names.append(r.path);
      names.push_back('\0');
      files[0]++;
    }
    std::string fileNote(reinterpret_cast<const char*>(files.data()), files.size() * sizeof(uint64_t));
    fileNote += names;

    for (size_t i = 0; i < threads_.size(); i++) {
      const Thread& t = threads_[i];
      struct elf_prstatus st;
      memset(&st, 0, sizeof st);
      st.pr_info.si_signo = t.signal;
      st.pr_cursig = static_cast<short>(t.signal);
      st.pr_pid = t.tid;
      st.pr_ppid = psinfo_.ppid;
      st.pr_pgrp = psinfo_.pgrp;
      st.pr_sid = psinfo_.sid;
      memcpy(&st.pr_reg, &t.regs, sizeof st.pr_reg);
      st.pr_fpvalid = t.fpValid ? 1 : 0;
      AppendNote(notes, "CORE", NT_PRSTATUS, &st, sizeof st);
      if (i == 0) {
        AppendNote(notes, "CORE", NT_PRPSINFO, &ps, sizeof ps);
        AppendNote(notes, "CORE", NT_AUXV, auxv_.data(), auxv_.size());
        AppendNote(notes, "CORE", NT_FILE, fileNote.data(), fileNote.size());
      }
      if (t.fpValid) AppendNote(notes, "CORE", NT_PRFPREG, &t.fpregs, sizeof t.fpregs);
#if defined(__x86_64__)
      if (!t.xstate.empty()) AppendNote(notes, "LINUX", NT_X86_XSTATE, t.xstate.data(), t.xstate.size());
#endif
    }
    return notes;
  }

  // process_vm_readv first (no bounce page: measured ~30% faster than /proc/<pid>/mem), then
  // pread of /proc/<pid>/mem from where it stopped: that says why a page cannot be read (EIO).
  ssize_t ReadMemory(char* buf, size_t want, uint64_t at) {
    struct iovec local = {buf, want};
    struct iovec remote = {reinterpret_cast<void*>(at), want};
    ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (n > 0) return n;
    if (at > static_cast<uint64_t>(INT64_MAX)) {
      errno = EOVERFLOW;
      return -1;
    }
    return pread(memFd_, buf, want, static_cast<off_t>(at));
  }

  bool Write() {
    const uint64_t pageSize = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    std::string notes = Notes(pageSize);
    size_t phnum = regions_.size() + 1;
    bool extended = phnum >= PN_XNUM;  // more mappings than e_phnum holds: the count goes in section 0's sh_info
    uint64_t notesOffset = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr) + (extended ? sizeof(Elf64_Shdr) : 0);
    uint64_t cursor = (notesOffset + notes.size() + pageSize - 1) / pageSize * pageSize;

    // Plan: every readable mapping, whole, while it fits in what the bound leaves.
    uint64_t left = options_.maxBytes;
    for (Region& r : regions_) {
      uint64_t size = r.end - r.start;
      if (r.perms.empty() || r.perms[0] != 'r') {
        r.skipped = "not readable (" + r.perms + ")";
      } else if (size > left) {
        r.skipped = "over the byte bound: needs " + std::to_string(size) + " bytes, " + std::to_string(left) + " of " +
                    std::to_string(options_.maxBytes) + " left";
      } else {
        r.planned = true;
        r.fileOffset = cursor;
        cursor += size;
        left -= size;
      }
    }

    ChunkWriter writer(fd_, options_.chunkBytes, pageSize);
    uint64_t fileSize = notesOffset + notes.size();
    bool writing = true;
    for (Region& r : regions_) {
      if (!r.planned || !writing) continue;
      uint64_t at = r.start;
      while (at < r.end) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(options_.chunkBytes, r.end - at));
        char* buffer = writer.Acquire();
        ssize_t n = ReadMemory(buffer, want, at);
        if (n < 0) {
          if (errno == EINTR) continue;
          r.skipped = std::string(at == r.start ? "unreadable: " : "unreadable after " + std::to_string(at - r.start) + " bytes: ") +
                      strerror(errno);
          break;
        }
        if (n == 0) {
          r.skipped = "the process's memory went away (it exited)";
          break;
        }
        writing = writer.Submit(static_cast<size_t>(n), r.fileOffset + (at - r.start));
        at += static_cast<uint64_t>(n);
        if (!writing) break;
      }
      r.dumped = at - r.start;
      dumpedBytes_ += r.dumped;
      if (r.dumped > 0) fileSize = std::max(fileSize, r.fileOffset + r.dumped);
    }
    if (int err = writer.Finish()) {
      errno = err;
      return FailErrno("cannot write the core");
    }
    // The end may be a hole: give the file its full length.
    if (ftruncate(fd_, static_cast<off_t>(fileSize)) != 0) return FailErrno("cannot size the core");

    std::string head;
    Elf64_Ehdr eh;
    memset(&eh, 0, sizeof eh);
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_ident[EI_OSABI] = ELFOSABI_NONE;
    eh.e_type = ET_CORE;
    eh.e_machine = kMachine;
    eh.e_version = EV_CURRENT;
    eh.e_phoff = sizeof(Elf64_Ehdr);
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = static_cast<Elf64_Half>(extended ? PN_XNUM : phnum);
    if (extended) {
      eh.e_shoff = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
      eh.e_shentsize = sizeof(Elf64_Shdr);
      eh.e_shnum = 1;
    }
    head.append(reinterpret_cast<const char*>(&eh), sizeof eh);
    Elf64_Phdr note;
    memset(&note, 0, sizeof note);
    note.p_type = PT_NOTE;
    note.p_offset = notesOffset;
    note.p_filesz = notes.size();
    note.p_align = 4;
    head.append(reinterpret_cast<const char*>(&note), sizeof note);
    for (const Region& r : regions_) {
      Elf64_Phdr ph;
      memset(&ph, 0, sizeof ph);
      ph.p_type = PT_LOAD;
      ph.p_offset = r.dumped > 0 ? r.fileOffset : fileSize;
      ph.p_vaddr = r.start;
      ph.p_filesz = r.dumped;
      ph.p_memsz = r.end - r.start;
      ph.p_flags = (r.perms.find('r') != std::string::npos ? PF_R : 0) | (r.perms.find('w') != std::string::npos ? PF_W : 0) |
                   (r.perms.find('x') != std::string::npos ? PF_X : 0);
      ph.p_align = pageSize;
      head.append(reinterpret_cast<const char*>(&ph), sizeof ph);
    }
    if (extended) {
      Elf64_Shdr sh;
      memset(&sh, 0, sizeof sh);
      sh.sh_info = static_cast<Elf64_Word>(phnum);
      head.append(reinterpret_cast<const char*>(&sh), sizeof sh);
    }
    head += notes;
    if (!PwriteAll(fd_, head.data(), head.size(), 0)) return FailErrno("cannot write the core");
    fileSize_ = fileSize;
    return true;
  }

  pid_t pid_;
  int fd_;
  Options options_;
  int procFd_ = -1;
  int memFd_ = -1;
  std::vector<Thread> threads_;
  std::vector<Region> regions_;
  std::string auxv_;
  Psinfo psinfo_;
  uint64_t fileSize_ = 0;
  uint64_t dumpedBytes_ = 0;
  double stopMs_ = 0, gateMs_ = 0, copyMs_ = 0;
  std::string error_;
  int err_ = 0;
};

class DumpWorker : public Napi::AsyncWorker {
 public:
  DumpWorker(Napi::Env env, pid_t pid, int fd, Options options, Napi::Value onStopped)
      : Napi::AsyncWorker(env, "amber.core.dump"), deferred_(Napi::Promise::Deferred::New(env)), dump_(pid, fd, options),
        gateTimeoutMs_(options.gateTimeoutMs) {
    if (onStopped.IsFunction()) {
      hook_ = Napi::ThreadSafeFunction::New(env, onStopped.As<Napi::Function>(), "amber.core.onStopped", 0, 1);
      hasHook_ = true;
    }
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    // A thread of its own (see Dump::Run): when it ends, the kernel detaches what it traced.
    std::thread worker([this] { dump_.Run([this](const std::vector<ThreadInfo>& info, std::string& why) { return WaitGate(info, why); }); });
    worker.join();
    if (hasHook_) hook_.Release();
    if (dump_.failed()) SetError(dump_.error());
  }

  void OnOK() override { deferred_.Resolve(dump_.Result(Env())); }

  void OnError(const Napi::Error& e) override {
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    err.Set("errno", Napi::Number::New(Env(), dump_.err()));
    const char* name = dump_.err() != 0 ? strerrorname_np(dump_.err()) : nullptr;
    err.Set("code", Napi::String::New(Env(), name != nullptr ? name : "EIO"));
    deferred_.Reject(err.Value());
  }

 private:
  // Calls onStopped(threads, resume) on the JS thread and waits for resume(error?).
  bool WaitGate(const std::vector<ThreadInfo>& info, std::string& why) {
    if (!hasHook_) return true;
    auto gate = std::make_shared<struct Gate>();
    napi_status status = hook_.BlockingCall([gate, info](Napi::Env env, Napi::Function onStopped) {
      if (env == nullptr) {
        gate->Open("the JavaScript environment is shutting down");
        return;
      }
      Napi::Array threads = Napi::Array::New(env, info.size());
      for (size_t i = 0; i < info.size(); i++) {
        Napi::Object t = Napi::Object::New(env);
        t.Set("tid", Napi::Number::New(env, info[i].tid));
        t.Set("pc", Napi::String::New(env, Hex(info[i].pc)));
        t.Set("sp", Napi::String::New(env, Hex(info[i].sp)));
        threads[i] = t;
      }
      auto* held = new std::shared_ptr<struct Gate>(gate);
      Napi::Function resume = Napi::Function::New(
          env,
          [](const Napi::CallbackInfo& cb) {
            auto* g = static_cast<std::shared_ptr<struct Gate>*>(cb.Data());
            (*g)->Open(cb.Length() > 0 && cb[0].IsString() ? cb[0].As<Napi::String>().Utf8Value() : "");
          },
          "resume", held);
      resume.AddFinalizer([](Napi::Env, std::shared_ptr<struct Gate>* g) { delete g; }, held);
      try {
        onStopped.Call({threads, resume});
      } catch (const Napi::Error& e) {
        gate->Open("onStopped threw: " + e.Message());
      }
    });
    if (status != napi_ok) {
      why = "cannot call onStopped (the JavaScript environment is shutting down)";
      return false;
    }
    std::unique_lock<std::mutex> lock(gate->mutex);
    if (!gate->cv.wait_for(lock, std::chrono::milliseconds(gateTimeoutMs_), [&] { return gate->done; })) {
      why = "onStopped did not resume the dump within " + std::to_string(gateTimeoutMs_) + " ms";
      return false;
    }
    if (!gate->error.empty()) {
      why = gate->error;
      return false;
    }
    return true;
  }

  Napi::Promise::Deferred deferred_;
  Dump dump_;
  int gateTimeoutMs_;
  Napi::ThreadSafeFunction hook_;
  bool hasHook_ = false;
};

Napi::Value DumpCore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsObject()) {
    Napi::TypeError::New(env, "dump(pid, fd, options, onStopped?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[2].As<Napi::Object>();
  Options options;
  Napi::Value maxBytes = o.Get("maxBytes");
  if (!maxBytes.IsNumber() || maxBytes.As<Napi::Number>().DoubleValue() < 0) {
    Napi::TypeError::New(env, "options.maxBytes must be a number >= 0").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  options.maxBytes = static_cast<uint64_t>(maxBytes.As<Napi::Number>().DoubleValue());
  if (o.Get("stopTimeoutMs").IsNumber()) options.stopTimeoutMs = o.Get("stopTimeoutMs").As<Napi::Number>().Int32Value();
  if (o.Get("gateTimeoutMs").IsNumber()) options.gateTimeoutMs = o.Get("gateTimeoutMs").As<Napi::Number>().Int32Value();
  if (o.Get("chunkBytes").IsNumber()) {
    int64_t chunk = o.Get("chunkBytes").As<Napi::Number>().Int64Value();
    options.chunkBytes = static_cast<size_t>(std::clamp<int64_t>(chunk, 1 << 16, 1 << 30));
  }
  pid_t pid = info[0].As<Napi::Number>().Int32Value();
  int fd = info[1].As<Napi::Number>().Int32Value();
  Napi::Value onStopped = info.Length() > 3 ? info[3] : env.Undefined();
  auto* worker = new DumpWorker(env, pid, fd, options, onStopped);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace

Napi::Object DefineCore(Napi::Env env) {
  Napi::Object core = Napi::Object::New(env);
  core.Set("dump", Napi::Function::New(env, DumpCore, "dump"));
  return core;
}

}  // namespace amber
