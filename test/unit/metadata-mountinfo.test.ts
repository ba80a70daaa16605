import { describe, expect, it } from 'vitest';
import {
  MAX_MOUNTINFO_LINE,
  parseMountinfoLine,
  parseOverlayRoot,
  splitLowerdirs,
  unescapeMountField,
} from '../../src/containers/metadata-mountinfo';

// the root line of a podman container on this machine, verbatim
const PODMAN_ROOT =
  '79 51 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/Q6GBDXOHIM666K6A4YWRSWR634,' +
  'upperdir=/var/lib/containers/storage/overlay/d257/diff,workdir=/var/lib/containers/storage/overlay/d257/work,uuid=on';
const RESOLV = '85 79 254:0 /run/x/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw,discard';

describe('mountinfo', () => {
  it('finds the overlay root of a container', () => {
    expect(parseOverlayRoot([PODMAN_ROOT, RESOLV, ''].join('\n'))).toEqual({
      upperdir: '/var/lib/containers/storage/overlay/d257/diff',
      lowerdirs: ['/var/lib/containers/storage/overlay/l/Q6GBDXOHIM666K6A4YWRSWR634'],
      workdir: '/var/lib/containers/storage/overlay/d257/work',
    });
  });

  it('decodes escapes in paths: space, tab, newline, backslash, comma, and overlayfs\' \\: in lowerdirs', () => {
    const line =
      '80 51 0:41 / / rw master:3 shared:7 - overlay my\\040src rw,lowerdir=/a\\040b\\:c:/d\\134e:/f\\054g,' +
      'upperdir=/up\\011per\\012x,workdir=/w';
    expect(parseOverlayRoot(line)).toEqual({ upperdir: '/up\tper\nx', lowerdirs: ['/a b:c', '/d\\e', '/f,g'], workdir: '/w' });
    expect(parseMountinfoLine(line)).toMatchObject({ mountId: 80, parentId: 51, source: 'my src', fsType: 'overlay' });
    expect(unescapeMountField('a\\777b\\04')).toBe('a\\777b\\04'); // not a byte, incomplete: kept
    expect(splitLowerdirs('::/a::')).toEqual(['/a']);
  });

  it('takes the last mount on "/" (it shadows the others) and lists lowerdir+= layers (kernels >= 6.5)', () => {
    const text = [PODMAN_ROOT, '90 79 0:50 / / rw - overlay overlay rw,lowerdir+=/l1,lowerdir+=/l2,upperdir=/u,workdir=/w'].join('\n');
    expect(parseOverlayRoot(text)).toEqual({ upperdir: '/u', lowerdirs: ['/l1', '/l2'], workdir: '/w' });
  });

  it('answers null when the root is no overlay or no line is well formed', () => {
    expect(parseOverlayRoot('22 1 254:0 / / rw - ext4 /dev/vda rw\n')).toBeNull();
    expect(parseOverlayRoot([PODMAN_ROOT, '23 1 254:0 / / rw - ext4 /dev/vda rw'].join('\n'))).toBeNull();
    expect(parseOverlayRoot('')).toBeNull();
    expect(parseOverlayRoot('79 51 0:40 / / rw - overlay overlay rw,upperdir=/u,workdir=/w')).toBeNull(); // no lowerdir
    expect(parseMountinfoLine('x 51 0:40 / / rw - overlay o rw')).toBeNull();
    expect(parseMountinfoLine('79 51 0:40 / / rw overlay o rw')).toBeNull(); // no separator
    expect(parseMountinfoLine('79 51 0:40 / / rw - overlay o rw extra')).toBeNull();
  });

  it('skips lines longer than the cap instead of parsing them', () => {
    const long = `79 51 0:40 / / rw - overlay overlay rw,lowerdir=/${'a'.repeat(MAX_MOUNTINFO_LINE)},upperdir=/u,workdir=/w`;
    expect(parseOverlayRoot(long)).toBeNull();
    expect(parseOverlayRoot([PODMAN_ROOT, long].join('\n'))).not.toBeNull();
  });

  it('never throws on seeded random mutations of real lines, and answers only strings', () => {
    let seed = 1234;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8;
    const alphabet = [' ', '-', '\\', '\\0', '\\040', ',', '=', ':', '\\:', '\n', '/', 'lowerdir=', 'lowerdir+=', 'upperdir=', '\u0000', 'é'];
    let parsed = 0;
    for (let i = 0; i < 20000; i++) {
      const base = [PODMAN_ROOT, RESOLV][i & 1].split('');
      for (let m = 0; m < 1 + (rand() % 6); m++) {
        const at = rand() % (base.length + 1);
        const op = rand() % 3;
        if (op === 0) base.splice(at, 1);
        else if (op === 1) base.splice(at, 0, alphabet[rand() % alphabet.length]);
        else base.splice(at, rand() % 20);
      }
      const text = base.join('');
      const root = parseOverlayRoot(text);
      if (root !== null) {
        parsed++;
        expect(typeof root.upperdir).toBe('string');
        expect(root.lowerdirs.length).toBeGreaterThan(0);
        for (const d of root.lowerdirs) expect(d).not.toBe('');
      }
    }
    expect(parsed).toBeGreaterThan(100); // the mutations leave many lines valid: the parser is exercised, not just rejecting
  });
});
