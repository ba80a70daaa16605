/** ELF core files built byte by byte, as the kernel and our dumper lay them out, for the memory search's tests. */
import fs from 'node:fs';

export interface Load {
  vaddr: bigint;
  data: Buffer;
  flags: number;
}

function note(type: number, desc: Buffer): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt32LE(5, 0);
  head.writeUInt32LE(desc.length, 4);
  head.writeUInt32LE(type, 8);
  const pad = Buffer.alloc((4 - (desc.length % 4)) % 4);
  return Buffer.concat([head, Buffer.from('CORE\0\0\0\0'), desc, pad]);
}

/** Writes a new file (never over one) at `file`: an ELF64 core: PT_NOTE (NT_PRPSINFO pid/comm, NT_FILE for the first load) then one PT_LOAD per load. */
export function writeCore(corePath: string, loads: Load[], pid = 4242, comm = 'victim'): string {
  const psinfo = Buffer.alloc(136);
  psinfo.writeInt32LE(pid, 24);
  psinfo.write(comm, 40, 'latin1');
  const file = Buffer.alloc(16 + 24);
  file.writeBigUInt64LE(1n, 0);
  file.writeBigUInt64LE(4096n, 8);
  file.writeBigUInt64LE(loads[0].vaddr, 16);
  file.writeBigUInt64LE(loads[0].vaddr + BigInt(loads[0].data.length), 24);
  const notes = Buffer.concat([note(3, psinfo), note(0x46494c45, Buffer.concat([file, Buffer.from('/usr/bin/victim\0')]))]);
  const phnum = loads.length + 1;
  const notesAt = 64 + 56 * phnum;
  let at = Math.ceil((notesAt + notes.length) / 4096) * 4096;
  const eh = Buffer.alloc(64);
  eh.writeUInt32BE(0x7f454c46, 0);
  eh[4] = 2;
  eh[5] = 1;
  eh[6] = 1;
  eh.writeUInt16LE(4, 16);
  eh.writeUInt16LE(62, 18);
  eh.writeBigUInt64LE(64n, 32);
  eh.writeUInt16LE(64, 52);
  eh.writeUInt16LE(56, 54);
  eh.writeUInt16LE(phnum, 56);
  const ph = Buffer.alloc(56 * phnum);
  ph.writeUInt32LE(4, 0);
  ph.writeBigUInt64LE(BigInt(notesAt), 8);
  ph.writeBigUInt64LE(BigInt(notes.length), 32);
  const parts: Array<[number, Buffer]> = [
    [0, eh],
    [64, ph],
    [notesAt, notes],
  ];
  loads.forEach((load, i) => {
    const o = 56 * (i + 1);
    ph.writeUInt32LE(1, o);
    ph.writeUInt32LE(load.flags, o + 4);
    ph.writeBigUInt64LE(BigInt(at), o + 8);
    ph.writeBigUInt64LE(load.vaddr, o + 16);
    ph.writeBigUInt64LE(BigInt(load.data.length), o + 32);
    ph.writeBigUInt64LE(BigInt(load.data.length), o + 40);
    parts.push([at, load.data]);
    at += load.data.length;
  });
  const fd = fs.openSync(corePath, 'wx', 0o600);
  for (const [offset, data] of parts) fs.writeSync(fd, data, 0, data.length, offset);
  fs.closeSync(fd);
  return corePath;
}
