#include "netcut.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "libbpf_log.h"
#include "netcut.skel.h"

namespace amber {
namespace {

// Pin names inside a cut's directory on bpffs.
constexpr const char* kDirections[] = {"ingress", "egress"};
constexpr const char* kDropsPin = "drops";

// An Error with code and errno like Node's, plus what libbpf said.
Napi::Error NetcutError(Napi::Env env, int err, const std::string& what) {
  std::string message = what;
  if (err != 0) message += ": " + std::string(strerror(err));
  std::string log = LibbpfLogText();
  while (!log.empty() && log.back() == '\n') log.pop_back();
  if (!log.empty()) message += "\n" + log;
  Napi::Error error = Napi::Error::New(env, message);
  const char* code = err == EPERM || err == EACCES ? "EPERM" : err == ENOENT ? "ENOENT" : err == EEXIST ? "EEXIST" : "ENETCUT";
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  return error;
}

struct LinkFacts {
  uint32_t link_id = 0;
  uint32_t prog_id = 0;
  // 0 once the cgroup is gone (the kernel detaches the link, the pin stays).
  uint64_t cgroup_id = 0;
};

int LinkFactsOf(int fd, LinkFacts* out) {
  bpf_link_info info;
  memset(&info, 0, sizeof(info));
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return -errno;
  if (info.type != BPF_LINK_TYPE_CGROUP) return -EINVAL;
  out->link_id = info.id;
  out->prog_id = info.prog_id;
  out->cgroup_id = info.cgroup.cgroup_id;
  return 0;
}

Napi::Object LinkObject(Napi::Env env, const LinkFacts& facts) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("linkId", Napi::Number::New(env, facts.link_id));
  o.Set("progId", Napi::Number::New(env, facts.prog_id));
  o.Set("cgroupId", Napi::Number::New(env, static_cast<double>(facts.cgroup_id)));
  return o;
}

bool StringArg(const Napi::CallbackInfo& info, size_t i, std::string* out) {
  if (info.Length() <= i || !info[i].IsString()) return false;
  *out = info[i].As<Napi::String>().Utf8Value();
  return !out->empty();
}

// attach(cgroupFd, pinDir) -> { ingress, egress: { linkId, progId, cgroupId } }
// Loads a fresh copy of the netcut object, attaches it to the cgroup in both
// directions and pins both links and the drop counters in pinDir (an existing,
// empty directory on bpffs). Then closes everything: the pins alone keep the
// cut in place, whatever becomes of this process. On failure nothing stays
// attached or pinned.
Napi::Value Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string pin_dir;
  if (info.Length() < 2 || !info[0].IsNumber() || !StringArg(info, 1, &pin_dir)) {
    throw Napi::TypeError::New(env, "attach(cgroupFd, pinDir)");
  }
  int cgroup_fd = info[0].As<Napi::Number>().Int32Value();
  struct statfs fs;
  if (fstatfs(cgroup_fd, &fs) != 0) throw NetcutError(env, errno, "fstatfs of the cgroup fd");
  if (static_cast<unsigned long>(fs.f_type) != CGROUP2_SUPER_MAGIC) {
    throw NetcutError(env, EINVAL, "the cgroup fd is not a cgroup v2 directory");
  }

  LibbpfLogInstall();
  LibbpfLogClear();
  netcut_bpf* skel = netcut_bpf__open_and_load();
  if (!skel) throw NetcutError(env, errno, "loading the netcut programs (verifier or kernel support)");

  bpf_program* progs[] = {skel->progs.amber_netcut_ingress, skel->progs.amber_netcut_egress};
  bpf_link* links[2] = {nullptr, nullptr};
  std::vector<std::string> pinned;
  LinkFacts facts[2];
  int err = 0;
  std::string what;
  std::string drops_pin = pin_dir + "/" + kDropsPin;
  if (bpf_map__pin(skel->maps.netcut_drops, drops_pin.c_str()) != 0) {
    err = errno;
    what = "pinning the drop counters at " + drops_pin;
  } else {
    pinned.push_back(drops_pin);
  }
  for (int i = 0; i < 2 && err == 0; i++) {
    links[i] = bpf_program__attach_cgroup(progs[i], cgroup_fd);
    if (!links[i]) {
      err = errno;
      what = std::string("attaching the ") + kDirections[i] + " program to the cgroup";
      break;
    }
    std::string pin = pin_dir + "/" + kDirections[i];
    if (bpf_link__pin(links[i], pin.c_str()) != 0) {
      err = errno;
      what = "pinning the " + std::string(kDirections[i]) + " link at " + pin;
      break;
    }
    pinned.push_back(pin);
    int e = LinkFactsOf(bpf_link__fd(links[i]), &facts[i]);
    if (e != 0) {
      err = -e;
      what = std::string("reading the ") + kDirections[i] + " link's info";
    }
  }
  if (err != 0) {
    for (const std::string& pin : pinned) unlink(pin.c_str());
  }
  // Closing the fds: a pinned link stays attached, an unpinned one detaches.
  for (bpf_link* link : links) {
    if (link) bpf_link__destroy(link);
  }
  netcut_bpf__destroy(skel);
  if (err != 0) throw NetcutError(env, err, what);

  Napi::Object out = Napi::Object::New(env);
  for (int i = 0; i < 2; i++) out.Set(kDirections[i], LinkObject(env, facts[i]));
  return out;
}

// inspect(pinDir) -> { ingress, egress: { linkId, progId, cgroupId } | null,
//                      drops: { ingress, egress } | null }
// What a cut's pins hold now, from any process (after an agent restart).
Napi::Value Inspect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string pin_dir;
  if (!StringArg(info, 0, &pin_dir)) throw Napi::TypeError::New(env, "inspect(pinDir)");
  Napi::Object out = Napi::Object::New(env);
  for (const char* direction : kDirections) {
    std::string pin = pin_dir + "/" + direction;
    int fd = bpf_obj_get(pin.c_str());
    if (fd < 0) {
      if (errno == ENOENT) {
        out.Set(direction, env.Null());
        continue;
      }
      throw NetcutError(env, errno, "opening the pinned link " + pin);
    }
    LinkFacts facts;
    int e = LinkFactsOf(fd, &facts);
    close(fd);
    if (e != 0) throw NetcutError(env, -e, "reading the pinned link " + pin + " (not a cgroup link?)");
    out.Set(direction, LinkObject(env, facts));
  }
  std::string drops_pin = pin_dir + "/" + kDropsPin;
  int fd = bpf_obj_get(drops_pin.c_str());
  if (fd < 0) {
    if (errno != ENOENT) throw NetcutError(env, errno, "opening the pinned drop counters " + drops_pin);
    out.Set("drops", env.Null());
    return out;
  }
  int ncpu = libbpf_num_possible_cpus();
  std::vector<uint64_t> values(ncpu > 0 ? ncpu : 1);
  Napi::Object drops = Napi::Object::New(env);
  for (uint32_t key = 0; key < 2; key++) {
    uint64_t total = 0;
    if (bpf_map_lookup_elem(fd, &key, values.data()) == 0) {
      for (uint64_t v : values) total += v;
    }
    drops.Set(kDirections[key], Napi::Number::New(env, static_cast<double>(total)));
  }
  close(fd);
  out.Set("drops", drops);
  return out;
}

}  // namespace

Napi::Object DefineNetcut(Napi::Env env) {
  Napi::Object netcut = Napi::Object::New(env);
  netcut.Set("attach", Napi::Function::New(env, Attach, "attach"));
  netcut.Set("inspect", Napi::Function::New(env, Inspect, "inspect"));
  return netcut;
}

}  // namespace amber
