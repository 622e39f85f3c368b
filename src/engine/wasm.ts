/**
 * A small WebAssembly encoder: enough of the binary format (WebAssembly Core Specification 2.0,
 * section 5) to build modules of loops over an imported memory with 128-bit SIMD, for the
 * element-wise loops V8 does not vectorize. Instructions are byte arrays; a function's body is a
 * list of them.
 */

/** Value types (5.3.1). */
export const I32 = 0x7f;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F32 | typeof F64 | typeof V128;

export type Instr = readonly number[];

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

/** Signed LEB128 (32-bit values). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
}

const simd = (code: number, ...imm: number[]): Instr => [0xfd, ...uleb(code), ...imm];
/** memarg: alignment exponent 0 (a hint only: every access is allowed unaligned) and offset 0. */
const MEM = [0, 0];

/** The instructions the kernels use (5.4). */
export const op = {
  get: (i: number): Instr => [0x20, ...uleb(i)],
  set: (i: number): Instr => [0x21, ...uleb(i)],
  tee: (i: number): Instr => [0x22, ...uleb(i)],
  i32: (n: number): Instr => [0x41, ...sleb(n)],
  i32Add: [0x6a],
  i32Sub: [0x6b],
  i32Mul: [0x6c],
  i32Shl: [0x74],
  i32ShrU: [0x76],
  i32GeU: [0x4f],
  i32Load: [0x28, 2, 0],
  f64Store: [0x39, 3, 0],
  f32Min: [0x96],
  f32Max: [0x97],
  f64PromoteF32: [0xbb],
  select: [0x1b],
  i32GtU: [0x4b],
  /** block and loop without results; br / brIf name the enclosing construct by depth */
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  end: [0x0b],
  br: (depth: number): Instr => [0x0c, ...uleb(depth)],
  brIf: (depth: number): Instr => [0x0d, ...uleb(depth)],
  vLoad: simd(0x00, ...MEM),
  vZero: simd(0x0c, ...Array<number>(16).fill(0)),
  vStore: simd(0x0b, ...MEM),
  vLoad32Zero: simd(0x5c, ...MEM),
  vLoad64Splat: simd(0x0a, ...MEM),
  vLoad32Lane: (lane: number): Instr => simd(0x56, ...MEM, lane),
  vStore32Lane: (lane: number): Instr => simd(0x5a, ...MEM, lane),
  /** i8x16.shuffle: byte i of the result is byte lanes[i] of a ++ b */
  shuffle: (lanes: readonly number[]): Instr => simd(0x0d, ...lanes),
  f32x4Splat: simd(0x13),
  f64x2Splat: simd(0x14),
  f32x4Add: simd(0xe4),
  f32x4Sub: simd(0xe5),
  f32x4Mul: simd(0xe6),
  f32x4Div: simd(0xe7),
  f32x4Min: simd(0xe8),
  f32x4Max: simd(0xe9),
  /** b < a ? b : a, lane by lane (a NaN in b is skipped) */
  f32x4Pmin: simd(0xea),
  /** a < b ? b : a */
  f32x4Pmax: simd(0xeb),
  f32x4ExtractLane: (lane: number): Instr => simd(0x1f, lane),
  f32x4Nearest: simd(0x6a),
  f64x2Add: simd(0xf0),
  f64x2Sub: simd(0xf1),
  f64x2Mul: simd(0xf2),
  f64x2Div: simd(0xf3),
  f32x4DemoteZero: simd(0x5e),
  f64x2PromoteLow: simd(0x5f),
  i32x4TruncSatF32x4S: simd(0xf8),
  i16x8NarrowI32x4S: simd(0x85),
  i8x16NarrowI16x8S: simd(0x65),
} as const;

/** Byte lanes of a shuffle that picks 32-bit lanes: lane k of the result is 32-bit lane ks[k] of a ++ b. */
export function lanes32(...ks: number[]): number[] {
  return ks.flatMap((k) => [4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3]);
}

export interface WasmFunction {
  name: string;
  params: readonly ValType[];
  locals: readonly ValType[];
  body: readonly Instr[];
}

const vec = (items: readonly (readonly number[])[]): number[] => [...uleb(items.length), ...items.flat()];
const name = (s: string): number[] => vec([...Buffer.from(s, "utf8")].map((b) => [b]));
const section = (id: number, content: number[]): number[] => [id, ...uleb(content.length), ...content];

/** A module importing its memory as env.memory and exporting `functions` (no results). */
export function wasmModule(functions: readonly WasmFunction[]): Uint8Array<ArrayBuffer> {
  const types = functions.map((f) => [0x60, ...vec(f.params.map((t) => [t])), ...vec([])]);
  const memoryImport = [...name("env"), ...name("memory"), 0x02, 0x00, 0x00];
  const exports = functions.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]);
  const codes = functions.map((f) => {
    const body = [...vec(f.locals.map((t) => [1, t])), ...f.body.flat(), 0x0b];
    return [...uleb(body.length), ...body];
  });
  return Uint8Array.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vec(types)),
    ...section(2, vec([memoryImport])),
    ...section(3, vec(functions.map((_, i) => uleb(i)))),
    ...section(7, vec(exports)),
    ...section(10, vec(codes)),
  ]);
}
