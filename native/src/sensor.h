// The sensor as JavaScript sees it: load and attach the BPF programs, drain
// their ring buffer into batches, detach and free everything on stop.
#pragma once
#include <napi.h>

#include "ring_reader.h"

#include <set>
#include <string>
#include <vector>

struct amber_bpf;
struct bpf_link;
struct bpf_program;

namespace amber {

struct SensorOptions {
  std::set<std::string> programs;  // BPF program names to load and attach
  uint64_t ring_bytes = 16u << 20;
  uint64_t wakeup_bytes = 4u << 20;
  bool ignore_self = false;  // leave out the calling process (by its tgid as the kernel sees it)
  bool ovl_by_inode_size = false;
  uint32_t syscall_families = 0;  // AMBER_FAMILY_* bits for the sys_exit dispatcher
  std::string cgroup_path;  // cgroup v2 root, for the cgroup_skb programs
  uint32_t batch_bytes = 1u << 20;
  uint32_t batch_count = 16;
  int poll_ms = 10;
};

class Sensor : public Napi::ObjectWrap<Sensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Sensor(const Napi::CallbackInfo& info);
  ~Sensor() override;

  // Runs on a worker thread (LoadWorker): open, load, attach, open the ring.
  // Returns a negative errno and fills error on failure.
  int Load(std::string* error);

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Drops(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Programs(const Napi::CallbackInfo& info);
  int RunSelf(bpf_program* prog, std::string* error);
  void Teardown();
  std::vector<uint64_t> ReadDrops();
  static void OnEnvExit(void* self);

  enum class State { kIdle, kStarting, kRunning, kStopped };
  State state_ = State::kIdle;
  SensorOptions options_;
  Napi::FunctionReference on_batch_;
  amber_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<std::string> attached_;  // every program it holds loaded (amber_self is run, not attached)
  int cgroup_fd_ = -1;
  RingReader* reader_ = nullptr;  // deleted by the batch function's finalizer once started
  bool reader_owned_by_tsfn_ = false;
  Napi::Promise::Deferred* stopped_ = nullptr;
  // What drops() and stats() report once torn down.
  std::vector<uint64_t> final_drops_;
  ReaderStats final_stats_;
};

}  // namespace amber
