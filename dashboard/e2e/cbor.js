// Just enough CBOR (RFC 8949) decoding for the tests to read what simulated devices publish:
// maps, arrays, text, integers, floats, booleans and null. Anything else throws.

export function decodeCbor(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;

  const length = (info) => {
    if (info < 24) return info;
    const size = { 24: 1, 25: 2, 26: 4, 27: 8 }[info];
    if (!size) throw new Error(`unsupported CBOR length encoding ${info}`);
    let n;
    if (size === 1) n = view.getUint8(pos);
    else if (size === 2) n = view.getUint16(pos);
    else if (size === 4) n = view.getUint32(pos);
    else n = Number(view.getBigUint64(pos));
    pos += size;
    return n;
  };

  const half = (h) => {
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    const sign = h & 0x8000 ? -1 : 1;
    if (exp === 0) return sign * 2 ** -14 * (mant / 1024);
    if (exp === 31) return mant ? NaN : sign * Infinity;
    return sign * 2 ** (exp - 15) * (1 + mant / 1024);
  };

  const item = () => {
    const first = view.getUint8(pos++);
    const major = first >> 5;
    const info = first & 0x1f;
    switch (major) {
      case 0: return length(info);
      case 1: return -1 - length(info);
      case 3: {
        const n = length(info);
        const text = new TextDecoder().decode(bytes.subarray(pos, pos + n));
        pos += n;
        return text;
      }
      case 4: return Array.from({ length: length(info) }, item);
      case 5: {
        const n = length(info);
        const out = {};
        for (let i = 0; i < n; i++) {
          const key = item();
          out[key] = item();
        }
        return out;
      }
      case 7: {
        if (info === 20) return false;
        if (info === 21) return true;
        if (info === 22 || info === 23) return null;
        if (info === 25) { const v = half(view.getUint16(pos)); pos += 2; return v; }
        if (info === 26) { const v = view.getFloat32(pos); pos += 4; return v; }
        if (info === 27) { const v = view.getFloat64(pos); pos += 8; return v; }
        throw new Error(`unsupported CBOR simple value ${info}`);
      }
      default:
        throw new Error(`unsupported CBOR major type ${major}`);
    }
  };
  return item();
}

/** A device payload as the bridge reads it: JSON when it starts with `{`, CBOR otherwise. */
export function decodePayload(buf) {
  if (buf.length > 0 && buf[0] === 0x7b) return JSON.parse(buf.toString('utf8'));
  return decodeCbor(new Uint8Array(buf));
}
