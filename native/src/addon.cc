// Module entry: the Sensor class, the network cut, the record layout (for the decoder's
// offset check) and the boot-to-epoch clock offset.
#include <napi.h>
#include <time.h>

#include <cstddef>

#include "core_dump.h"
#include "events.h"
#include "lock.h"
#include "netcut.h"
#include "sensor.h"

namespace amber {
namespace {

// sizeof/offsetof of every record field, as the compiler laid them out.
Napi::Value Layout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
#define SIZE(type) out.Set(#type, Napi::Number::New(env, sizeof(struct type)))
#define FIELD(type, field) out.Set(#type "." #field, Napi::Number::New(env, offsetof(struct type, field)))
  SIZE(amber_header);
  FIELD(amber_header, kind);
  FIELD(amber_header, flags);
  FIELD(amber_header, size);
  FIELD(amber_header, pid);
  FIELD(amber_header, ts);
  FIELD(amber_header, tid);
  FIELD(amber_header, ppid);
  FIELD(amber_header, uid);
  FIELD(amber_header, gid);
  FIELD(amber_header, cgroup_id);
  FIELD(amber_header, mntns);
  FIELD(amber_header, netns);
  FIELD(amber_header, comm);
  SIZE(amber_exec);
  FIELD(amber_exec, filename_len);
  FIELD(amber_exec, exe_path_len);
  FIELD(amber_exec, args_len);
  FIELD(amber_exec, cwd_len);
  SIZE(amber_exit);
  FIELD(amber_exit, exit_code);
  FIELD(amber_exit, signal);
  SIZE(amber_fork);
  FIELD(amber_fork, child_pid);
  SIZE(amber_open);
  FIELD(amber_open, ret);
  FIELD(amber_open, flags);
  FIELD(amber_open, mode);
  FIELD(amber_open, path_len);
  SIZE(amber_sock);
  FIELD(amber_sock, ret);
  FIELD(amber_sock, proto);
  FIELD(amber_sock, family);
  FIELD(amber_sock, sport);
  FIELD(amber_sock, dport);
  FIELD(amber_sock, saddr);
  FIELD(amber_sock, daddr);
  SIZE(amber_dns);
  FIELD(amber_dns, proto);
  FIELD(amber_dns, family);
  FIELD(amber_dns, sport);
  FIELD(amber_dns, dport);
  FIELD(amber_dns, payload_len);
  FIELD(amber_dns, saddr);
  FIELD(amber_dns, daddr);
  SIZE(amber_cgroup);
  FIELD(amber_cgroup, id);
  FIELD(amber_cgroup, path_len);
#undef SIZE
#undef FIELD
  out.Set("AMBER_RECORD_MAX", Napi::Number::New(env, AMBER_RECORD_MAX));
  out.Set("AMBER_PATH_MAX", Napi::Number::New(env, AMBER_PATH_MAX));
  out.Set("AMBER_ARGS_MAX", Napi::Number::New(env, AMBER_ARGS_MAX));
  out.Set("AMBER_DNS_MAX", Napi::Number::New(env, AMBER_DNS_MAX));
  out.Set("AMBER_KIND_MAX", Napi::Number::New(env, AMBER_KIND_MAX));
  return out;
}

// The numbers of the wire contract besides offsets: event kinds, header flag
// bits and syscall family bits, by their C names, as compiled.
Napi::Value WireConstants(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object kinds = Napi::Object::New(env);
  Napi::Object flags = Napi::Object::New(env);
  Napi::Object families = Napi::Object::New(env);
#define SET(obj, name) obj.Set(#name, Napi::Number::New(env, name))
  SET(kinds, AMBER_EXEC);
  SET(kinds, AMBER_EXIT);
  SET(kinds, AMBER_FORK);
  SET(kinds, AMBER_OPEN);
  SET(kinds, AMBER_CONNECT);
  SET(kinds, AMBER_ACCEPT);
  SET(kinds, AMBER_DNS);
  SET(kinds, AMBER_CGROUP);
  SET(kinds, AMBER_KIND_MAX);
  SET(flags, AMBER_F_UPPER_LAYER);
  SET(flags, AMBER_F_FILELESS);
  SET(flags, AMBER_F_ARGS_TRUNCATED);
  SET(flags, AMBER_F_PATH_TRUNCATED);
  SET(flags, AMBER_F_PATH_RESOLVED);
  SET(flags, AMBER_F_INGRESS);
  SET(flags, AMBER_F_CGROUP_RMDIR);
  SET(flags, AMBER_F_SCRIPT);
  SET(families, AMBER_FAMILY_FILE);
  SET(families, AMBER_FAMILY_NET);
#undef SET
  Napi::Object out = Napi::Object::New(env);
  out.Set("kinds", kinds);
  out.Set("flags", flags);
  out.Set("families", families);
  return out;
}

// CLOCK_REALTIME - CLOCK_BOOTTIME in ns: added to a record's ts to get epoch ns.
Napi::Value BootToEpochNs(const Napi::CallbackInfo& info) {
  struct timespec real, boot;
  clock_gettime(CLOCK_BOOTTIME, &boot);
  clock_gettime(CLOCK_REALTIME, &real);
  double ns = (static_cast<double>(real.tv_sec) - static_cast<double>(boot.tv_sec)) * 1e9 +
              (static_cast<double>(real.tv_nsec) - static_cast<double>(boot.tv_nsec));
  return Napi::Number::New(info.Env(), ns);
}

}  // namespace

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {
                             InstanceValue("Sensor", Sensor::Define(env)),
                             InstanceValue("files", DefineFiles(env)),
                             InstanceValue("core", DefineCore(env)),
                             InstanceValue("netcut", DefineNetcut(env)),
                             InstanceMethod<&Addon::CallLayout>("layout"),
                             InstanceMethod<&Addon::CallWireConstants>("wireConstants"),
                             InstanceMethod<&Addon::CallBootToEpochNs>("bootToEpochNs"),
                         });
  }

 private:
  Napi::Value CallLayout(const Napi::CallbackInfo& info) { return Layout(info); }
  Napi::Value CallWireConstants(const Napi::CallbackInfo& info) { return WireConstants(info); }
  Napi::Value CallBootToEpochNs(const Napi::CallbackInfo& info) { return BootToEpochNs(info); }
};

}  // namespace amber

using amber::Addon;
NODE_API_ADDON(Addon)
