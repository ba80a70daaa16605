// File primitives Node does not have: for the buffer's data dir an advisory
// lock the kernel releases when its holder dies (flock), and SEEK_DATA so a
// scan skips the holes of a sparse file instead of reading gigabytes of zeros;
// for incident capture SEEK_HOLE (sparse files stay sparse in a tar) and
// fgetxattr (overlayfs marks opaque directories with an xattr).
#pragma once
#include <napi.h>

namespace amber {

// { lock(fd) -> true | false (held by another open file), seekData(fd, offset) -> offset | -1 (no data after),
//   seekHole(fd, offset) -> offset | -1 (past the end), getxattr(fd, name) -> Buffer | null (none) }
Napi::Object DefineFiles(Napi::Env env);

}  // namespace amber
