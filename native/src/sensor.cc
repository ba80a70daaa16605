#include "sensor.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "amber.skel.h"
#include "events.h"
#include "libbpf_log.h"
#include "ring_reader.h"

namespace amber {
namespace {

// An Error with code, errno and libbpf's own words, like Node's ErrnoException.
Napi::Error SensorError(Napi::Env env, int err, const std::string& what) {
  std::string message = what;
  if (err != 0) message += ": " + std::string(strerror(err));
  std::string log = LibbpfLogText();
  while (!log.empty() && log.back() == '\n') log.pop_back();
  if (!log.empty()) message += "\n" + log;  // libbpf's lines start with "libbpf: " already
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, err == EPERM || err == EACCES ? "EPERM" : "ESENSOR"));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("libbpf", Napi::String::New(env, log));
  return error;
}

uint64_t NumberOption(const Napi::Object& o, const char* key, uint64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d < 0) throw Napi::RangeError::New(o.Env(), std::string(key) + " must not be negative");
  return static_cast<uint64_t>(d);
}

// The program that tells the kernel which process is the sensor's own (bpf/amber.bpf.c).
constexpr const char* kSelfProgram = "amber_self";

// How many bytes a CPU submits between two looks at the ring's fill: all CPUs
// together then pass the wakeup threshold by at most an eighth of the room
// left above it before the reader is woken. 0 = look on every record.
uint32_t FillCheckBytes(uint64_t ring_bytes, uint64_t wakeup_bytes) {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0 || wakeup_bytes >= ring_bytes) return 0;
  uint64_t step = (ring_bytes - wakeup_bytes) / (8 * static_cast<uint64_t>(ncpu));
  return static_cast<uint32_t>(std::min<uint64_t>(step, 64u << 10));
}

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, Sensor* sensor, Napi::Promise::Deferred deferred,
             std::function<void(Napi::Env)> on_loaded, std::function<void()> on_failed)
      : Napi::AsyncWorker(env),
        sensor_(sensor),
        deferred_(deferred),
        on_loaded_(on_loaded),
        on_failed_(on_failed) {}

  void Execute() override { err_ = sensor_->Load(&what_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      Napi::Error error = SensorError(env, -err_, what_);
      on_failed_();  // frees what the load made, right away
      deferred_.Reject(error.Value());
      return;
    }
    on_loaded_(env);
    deferred_.Resolve(env.Undefined());
  }

 private:
  Sensor* sensor_;
  Napi::Promise::Deferred deferred_;
  std::function<void(Napi::Env)> on_loaded_;
  std::function<void()> on_failed_;
  int err_ = 0;
  std::string what_;
};

}  // namespace

Napi::Function Sensor::Define(Napi::Env env) {
  return DefineClass(env, "Sensor",
                     {
                         InstanceMethod<&Sensor::Start>("start"),
                         InstanceMethod<&Sensor::Stop>("stop"),
                         InstanceMethod<&Sensor::Drops>("drops"),
                         InstanceMethod<&Sensor::Stats>("stats"),
                         InstanceMethod<&Sensor::Programs>("programs"),
                     });
}

// new Sensor(options, onBatch): arguments are validated and copied here, before
// any work leaves the JS thread.
Sensor::Sensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Sensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
    throw Napi::TypeError::New(env, "new Sensor(options, onBatch)");
  }
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Value programs = o.Get("programs");
  if (!programs.IsArray()) throw Napi::TypeError::New(env, "programs must be an array of names");
  Napi::Array list = programs.As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value name = list.Get(i);
    if (!name.IsString()) throw Napi::TypeError::New(env, "programs must be an array of names");
    options_.programs.insert(name.As<Napi::String>().Utf8Value());
  }
  options_.ring_bytes = NumberOption(o, "ringBytes", options_.ring_bytes);
  options_.wakeup_bytes = NumberOption(o, "wakeupBytes", options_.wakeup_bytes);
  options_.ignore_self = o.Get("ignoreSelf").ToBoolean();
  options_.ovl_by_inode_size = o.Get("ovlByInodeSize").ToBoolean();
  options_.syscall_families = NumberOption(o, "syscallFamilies", 0);
  options_.batch_bytes = NumberOption(o, "batchBytes", options_.batch_bytes);
  options_.batch_count = NumberOption(o, "batchCount", options_.batch_count);
  options_.poll_ms = NumberOption(o, "pollMs", options_.poll_ms);
  Napi::Value cgroup = o.Get("cgroupPath");
  if (cgroup.IsString()) options_.cgroup_path = cgroup.As<Napi::String>().Utf8Value();
  if (options_.batch_bytes < 2 * AMBER_RECORD_MAX) {
    throw Napi::RangeError::New(env, "batchBytes must be at least 8192");
  }
  if (options_.batch_count < 2) throw Napi::RangeError::New(env, "batchCount must be at least 2");
  on_batch_ = Napi::Persistent(info[1].As<Napi::Function>());
  env.AddCleanupHook(OnEnvExit, this);
}

Sensor::~Sensor() { Teardown(); }

void Sensor::OnEnvExit(void* self) { static_cast<Sensor*>(self)->Teardown(); }

int Sensor::Load(std::string* error) {
  LibbpfLogInstall();
  LibbpfLogClear();
  skel_ = amber_bpf__open();
  if (!skel_) {
    *error = "opening the BPF object";
    return -errno;
  }
  skel_->rodata->amber_wakeup_bytes = options_.wakeup_bytes;
  skel_->rodata->amber_fill_check_bytes = FillCheckBytes(options_.ring_bytes, options_.wakeup_bytes);
  skel_->rodata->amber_ovl_by_inode_size = options_.ovl_by_inode_size ? 1 : 0;
  skel_->rodata->amber_families = options_.syscall_families;
  int err = bpf_map__set_max_entries(skel_->maps.events, options_.ring_bytes);
  if (err) {
    *error = "setting the ring size (a power of 2, multiple of the page size)";
    return err;
  }
  bpf_program* prog;
  std::set<std::string> unknown = options_.programs;
  bpf_object__for_each_program(prog, skel_->obj) {
    std::string name = bpf_program__name(prog);
    bool wanted = options_.programs.count(name) > 0 || (name == kSelfProgram && options_.ignore_self);
    unknown.erase(name);
    bpf_program__set_autoload(prog, wanted);
  }
  if (!unknown.empty()) {
    *error = "no BPF program named " + *unknown.begin();
    return -ENOENT;
  }
  err = amber_bpf__load(skel_);
  if (err) {
    *error = "loading the BPF programs (verifier or kernel support)";
    return err;
  }
  bpf_object__for_each_program(prog, skel_->obj) {
    if (!bpf_program__autoload(prog)) continue;
    std::string name = bpf_program__name(prog);
    if (name == kSelfProgram) {
      err = RunSelf(prog, error);
      if (err) return err;
      attached_.push_back(name);
      continue;
    }
    bpf_link* link;
    if (bpf_program__type(prog) == BPF_PROG_TYPE_CGROUP_SKB) {
      if (cgroup_fd_ < 0) {
        cgroup_fd_ = open(options_.cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (cgroup_fd_ < 0) {
          int e = errno;
          *error = "opening the cgroup v2 root " + options_.cgroup_path;
          return -e;
        }
      }
      link = bpf_program__attach_cgroup(prog, cgroup_fd_);
    } else {
      link = bpf_program__attach(prog);
    }
    if (!link) {
      int e = errno;
      *error = "attaching " + name;
      return -e;
    }
    links_.push_back(link);
    attached_.push_back(name);
  }
  reader_ = new RingReader(bpf_map__fd(skel_->maps.events), options_.batch_bytes, options_.batch_count,
                           options_.poll_ms);
  err = reader_->Open();
  if (err) {
    *error = "opening the ring buffer";
    return err;
  }
  return 0;
}

// Runs amber_self once in this thread: the kernel writes the tgid it knows
// this process by (the host's, also inside a PID namespace) where every
// program compares. Load() runs on a worker thread of this same process.
int Sensor::RunSelf(bpf_program* prog, std::string* error) {
  LIBBPF_OPTS(bpf_test_run_opts, opts);
  int err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts);
  if (err) {
    int e = errno;
    *error = "running amber_self (the sensor's own tgid)";
    return -e;
  }
  if (skel_->bss->amber_self_tgid == 0) {
    *error = "amber_self did not report the sensor's tgid";
    return -EIO;
  }
  return 0;
}

Napi::Value Sensor::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (state_ != State::kIdle) throw Napi::Error::New(env, "the sensor was already started");
  state_ = State::kStarting;
  auto deferred = Napi::Promise::Deferred::New(env);
  auto* worker = new LoadWorker(
      env, this, deferred,
      [this](Napi::Env env) {
        if (state_ != State::kStarting) return;  // torn down while loading
        BatchTsfn tsfn = BatchTsfn::New(env, on_batch_.Value(), "amber-ring", 0, 1, reader_,
                                        [this](Napi::Env, void*, RingReader* reader) {
                                          delete reader;
                                          if (stopped_) {
                                            stopped_->Resolve(stopped_->Env().Undefined());
                                            delete stopped_;
                                            stopped_ = nullptr;
                                          }
                                        });
        // Referenced while running (a started sensor is a reason to stay
        // alive); stop() releases it.
        reader_owned_by_tsfn_ = true;
        uv_loop_t* loop = nullptr;
        napi_get_uv_event_loop(env, &loop);
        reader_->Start(tsfn, loop);
        state_ = State::kRunning;
      },
      [this] { Teardown(); });
  worker->Queue();
  return deferred.Promise();
}

Napi::Value Sensor::Stop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  Napi::Promise promise = deferred.Promise();
  if (state_ == State::kRunning && reader_owned_by_tsfn_ && !stopped_) {
    // Resolved by the batch function's finalizer: every batch has reached JavaScript.
    stopped_ = new Napi::Promise::Deferred(deferred);
    Teardown();
  } else {
    Teardown();
    deferred.Resolve(env.Undefined());
  }
  return promise;
}

// Detach everything, then free it. Safe to call more than once.
void Sensor::Teardown() {
  if (state_ == State::kStopped) return;
  state_ = State::kStopped;
  for (bpf_link* link : links_) bpf_link__destroy(link);
  links_.clear();
  final_drops_ = ReadDrops();
  if (reader_) {
    // Drains what the programs wrote, then releases the batch function.
    reader_->Stop();
    final_stats_ = reader_->Stats();
    if (!reader_owned_by_tsfn_) delete reader_;
    reader_ = nullptr;
  }
  if (skel_) {
    amber_bpf__destroy(skel_);
    skel_ = nullptr;
  }
  if (cgroup_fd_ >= 0) {
    close(cgroup_fd_);
    cgroup_fd_ = -1;
  }
}

// Records the programs could not put in the ring, per enum amber_kind.
std::vector<uint64_t> Sensor::ReadDrops() {
  std::vector<uint64_t> totals(AMBER_KIND_MAX, 0);
  int ncpu = libbpf_num_possible_cpus();
  if (!skel_ || ncpu <= 0) return final_drops_.empty() ? totals : final_drops_;
  std::vector<uint64_t> values(ncpu);
  for (uint32_t kind = 0; kind < AMBER_KIND_MAX; kind++) {
    if (bpf_map__lookup_elem(skel_->maps.drops, &kind, sizeof(kind), values.data(),
                             values.size() * sizeof(uint64_t), 0) == 0) {
      for (uint64_t v : values) totals[kind] += v;
    }
  }
  return totals;
}

Napi::Value Sensor::Drops(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint64_t> totals = ReadDrops();
  Napi::Array out = Napi::Array::New(env, totals.size());
  for (uint32_t kind = 0; kind < totals.size(); kind++) {
    out.Set(kind, Napi::Number::New(env, static_cast<double>(totals[kind])));
  }
  return out;
}

Napi::Value Sensor::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  ReaderStats stats = reader_ ? reader_->Stats() : final_stats_;
  out.Set("records", Napi::Number::New(env, static_cast<double>(stats.records)));
  out.Set("bytes", Napi::Number::New(env, static_cast<double>(stats.bytes)));
  out.Set("batches", Napi::Number::New(env, static_cast<double>(stats.batches)));
  out.Set("stalls", Napi::Number::New(env, static_cast<double>(stats.stalls)));
  return out;
}

Napi::Value Sensor::Programs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env, attached_.size());
  for (size_t i = 0; i < attached_.size(); i++) out.Set(i, Napi::String::New(env, attached_[i]));
  return out;
}

}  // namespace amber
