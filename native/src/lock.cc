#include "lock.h"

#include <errno.h>
#include <string.h>
#include <sys/file.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <string>

namespace amber {
namespace {

void ThrowErrno(Napi::Env env, const char* what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, err == EBADF ? "EBADF" : err == ENOLCK ? "ENOLCK" : err == ERANGE ? "ERANGE" : "EIO"));
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

// The first offset >= `offset` where a hole starts (the end of the file counts as one),
// or -1 when `offset` is at or past the end.
Napi::Value SeekHole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info);
  if (fd < 0) return env.Undefined();
  off_t from = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t at = lseek(fd, from, SEEK_HOLE);
  if (at >= 0) return Napi::Number::New(env, static_cast<double>(at));
  if (errno == ENXIO) return Napi::Number::New(env, -1);
  // Filesystems without SEEK_HOLE: the only hole is the end of the file.
  if (errno == EINVAL || errno == EOPNOTSUPP) {
    off_t end = lseek(fd, 0, SEEK_END);
    if (end >= 0) return Napi::Number::New(env, end > from ? static_cast<double>(end) : -1.0);
  }
  ThrowErrno(env, "lseek SEEK_HOLE", errno);
  return env.Undefined();
}

// fgetxattr: the value's bytes, or null when the file has no such attribute (or the
// filesystem none at all). An fd, not a path: the caller has checked what it opened.
Napi::Value GetXattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info);
  if (fd < 0) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsString()) {
    Napi::TypeError::New(env, "name must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string name = info[1].As<Napi::String>().Utf8Value();
  // Values Amber reads are tiny (overlay's "y"); a larger one is reported, not truncated.
  char value[4096];
  for (;;) {
    ssize_t n = fgetxattr(fd, name.c_str(), value, sizeof value);
    if (n >= 0) return Napi::Buffer<char>::Copy(env, value, static_cast<size_t>(n));
    if (errno == EINTR) continue;
    if (errno == ENODATA || errno == ENOTSUP) return env.Null();
    ThrowErrno(env, "fgetxattr", errno);
    return env.Undefined();
  }
}

}  // namespace

Napi::Object DefineFiles(Napi::Env env) {
  Napi::Object files = Napi::Object::New(env);
  files.Set("lock", Napi::Function::New(env, Lock, "lock"));
  files.Set("seekData", Napi::Function::New(env, SeekData, "seekData"));
  files.Set("seekHole", Napi::Function::New(env, SeekHole, "seekHole"));
  files.Set("getxattr", Napi::Function::New(env, GetXattr, "getxattr"));
  return files;
}

}  // namespace amber
