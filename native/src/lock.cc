#include "lock.h"

#include <errno.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <string>

namespace amber {
namespace {

void ThrowErrno(Napi::Env env, const char* what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, err == EBADF ? "EBADF" : err == ENOLCK ? "ENOLCK" : "EIO"));
  e.ThrowAsJavaScriptException();
}

int FdArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(info.Env(), "fd must be a number").ThrowAsJavaScriptException();
    return -1;
  }
  return info[0].As<Napi::Number>().Int32Value();
}

// Exclusive, non-blocking: true when taken, false when another open file holds it.
// The kernel drops the lock when the last descriptor of that open file closes,
// including when its process is killed: no stale lock after kill -9.
Napi::Value Lock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info);
  if (fd < 0) return env.Undefined();
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return Napi::Boolean::New(env, true);
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    ThrowErrno(env, "flock", errno);
    return env.Undefined();
  }
}

// The first offset >= `offset` holding data, or -1 when only a hole (or the end) follows.
Napi::Value SeekData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info);
  if (fd < 0) return env.Undefined();
  off_t from = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t at = lseek(fd, from, SEEK_DATA);
  if (at >= 0) return Napi::Number::New(env, static_cast<double>(at));
  if (errno == ENXIO) return Napi::Number::New(env, -1);
  // Filesystems without SEEK_DATA report the whole file as data.
  if (errno == EINVAL || errno == EOPNOTSUPP) return Napi::Number::New(env, static_cast<double>(from));
  ThrowErrno(env, "lseek SEEK_DATA", errno);
  return env.Undefined();
}

}  // namespace

Napi::Object DefineFiles(Napi::Env env) {
  Napi::Object files = Napi::Object::New(env);
  files.Set("lock", Napi::Function::New(env, Lock, "lock"));
  files.Set("seekData", Napi::Function::New(env, SeekData, "seekData"));
  return files;
}

}  // namespace amber
