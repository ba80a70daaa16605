// File primitives Node does not have, for the buffer's data dir: an advisory
// lock the kernel releases when its holder dies (flock), and SEEK_DATA so a
// scan skips the holes of a sparse file instead of reading gigabytes of zeros.
#pragma once
#include <napi.h>

namespace amber {

// { lock(fd) -> true | false (held by another open file), seekData(fd, offset) -> offset | -1 (no data after) }
Napi::Object DefineFiles(Napi::Env env);

}  // namespace amber
