/**
 * GPTQ's column loop and transposes as WebAssembly SIMD loops, four rows at a time (V8 does not
 * vectorize the JavaScript loops). Every value is computed as gptq-columns.ts's JavaScript
 * computes it, bit for bit: float32 operations where JavaScript rounds each step to float32
 * (Math.fround, stores into Float32Array) and float64 ones where it computes in doubles (the
 * error spread W - err * h, the loss). Rows must be a multiple of 4 (columns too, for the
 * transposes). A kernel's body is a list of statements, each a list of instructions.
 */
import { F32, F64, I32, type Instr, V128, type ValType, type WasmFunction, lanes32, op, wasmModule } from "../engine/wasm.js";

const { get, set, tee, i32, i32Add, i32Mul, i32Shl, i32ShrU, vLoad, vStore, shuffle } = op;

/** for (x = first; x < limit; x += step) { statements } (`x`, `limit`: local indices; `first`: the instruction giving x's first value) */
function loopFrom(x: number, first: Instr, limit: number, step: number, statements: readonly Instr[][]): Instr[] {
  return [
    [first, set(x), op.block, op.loop],
    [get(x), get(limit), op.i32GeU, op.brIf(1)],
    ...statements,
    [get(x), i32(step), i32Add, set(x), op.br(0), op.end, op.end],
  ].flat();
}

/** for (x = 0; x < limit; x += step) { statements } (`x`, `limit`: local indices) */
const forLoop = (x: number, limit: number, step: number, statements: readonly Instr[][]): Instr[] =>
  loopFrom(x, i32(0), limit, step, statements);

/** for (x = start; x < limit; x += step) { statements } (`x`, `start`, `limit`: local indices) */
const forFrom = (x: number, start: number, limit: number, step: number, statements: readonly Instr[][]): Instr[] =>
  loopFrom(x, get(start), limit, step, statements);

/**
 * Bytes of a row the transposes take at a time: the pages of the columns a tile reads or writes
 * stay few however long the columns (docs/performance.md, "Measurements behind the code").
 */
const TILE_IN = 64;
const TILE_OUT = 1024;

/** end = min(start + bytes, limit) (locals start, limit, end) */
function tileEnd(start: number, bytes: number, limit: number, end: number): Instr[] {
  return [get(start), i32(bytes), i32Add, set(end), get(limit), get(end), get(end), get(limit), op.i32GtU, op.select, set(end)];
}

/** A kernel: parameter names and types, then local names (v128 unless in `ints`); `body` gets every index by name. */
function kernel<P extends string, L extends string>(
  name: string,
  params: Record<P, ValType>,
  locals: readonly L[],
  ints: readonly L[],
  body: (x: Record<P | L, number>) => Instr[][],
): WasmFunction {
  const names = [...Object.keys(params), ...locals];
  const x = Object.fromEntries(names.map((n, k) => [n, k])) as Record<P | L, number>;
  return {
    name,
    params: Object.values(params) as ValType[],
    locals: locals.map((l) => (ints.includes(l) ? I32 : V128)),
    body: body(x).flat(),
  };
}

const HIGH = shuffle(lanes32(2, 3, 2, 3));
const JOIN = shuffle(lanes32(0, 1, 4, 5));
/** the float64 pair of the low or the high two float32 lanes of local v */
const low64 = (v: number): Instr[] => [get(v), op.f64x2PromoteLow];
const high64 = (v: number): Instr[] => [get(v), get(v), HIGH, op.f64x2PromoteLow];
/** base + offset (locals) */
const at = (base: number, offset: number): Instr[] => [get(base), get(offset), i32Add];

type SpreadLocals = Record<"wc" | "bytes" | "hs" | "count" | "i" | "j" | "p" | "w" | "h" | "elo" | "ehi", number>;

/**
 * The error (float64 pairs elo, ehi) of rows i.. spread over the `count` columns after the one at
 * `wc` (stride `bytes`): W_j = f32(W_j - err * h_j) in float64, h_j as float64 at hs + 8j.
 */
function spreadRows(x: SpreadLocals): Instr[][] {
  const half = (pick: Instr[], e: number): Instr[] => [...pick, get(e), get(x.h), op.f64x2Mul, op.f64x2Sub, op.f32x4DemoteZero];
  return [
    [...at(x.wc, x.bytes), get(x.i), i32Add, set(x.p)],
    forLoop(x.j, x.count, 1, [
      [get(x.hs), get(x.j), i32(3), i32Shl, i32Add, op.vLoad64Splat, set(x.h)],
      [get(x.p), vLoad, set(x.w)],
      [get(x.p), ...half(low64(x.w), x.elo), ...half(high64(x.w), x.ehi), JOIN, vStore],
      [get(x.p), get(x.bytes), i32Add, set(x.p)],
    ]),
  ];
}

const SPREAD_LOCALS = ["i", "j", "p", "w", "h", "elo", "ehi"] as const;

/**
 * quantSpreadInt: the int column at wc (`bytes` / 4 rows) quantized in place as quantizeColumnInt
 * does: codes at `codes`, error / d at `errs`, (w - dq)^2 / d2 added to the float64 losses at
 * `loss`; then its error spread over the `count` columns after it.
 */
const quantSpreadInt = kernel(
  "quantSpreadInt",
  {
    wc: I32,
    codes: I32,
    errs: I32,
    scale: I32,
    zp: I32,
    loss: I32,
    bytes: I32,
    hs: I32,
    count: I32,
    d: F32,
    d2: F64,
    qmin: F32,
    qmax: F32,
  },
  [...SPREAD_LOCALS, "s", "z", "q", "dq", "t", "ev", "dv", "d2v", "qminv", "qmaxv"],
  ["i", "j", "p"],
  (x) => [
    [get(x.d), op.f32x4Splat, set(x.dv), get(x.d2), op.f64x2Splat, set(x.d2v)],
    [get(x.qmin), op.f32x4Splat, set(x.qminv), get(x.qmax), op.f32x4Splat, set(x.qmaxv)],
    forLoop(x.i, x.bytes, 16, [
      [...at(x.wc, x.i), vLoad, set(x.w), ...at(x.scale, x.i), vLoad, set(x.s), ...at(x.zp, x.i), vLoad, set(x.z)],
      // q = clamp(round_half_even(f32(w / s)) + z); its int8 code
      [get(x.w), get(x.s), op.f32x4Div, op.f32x4Nearest, get(x.z), op.f32x4Add],
      [get(x.qmaxv), op.f32x4Min, get(x.qminv), op.f32x4Max, set(x.q)],
      [get(x.codes), get(x.i), i32(2), i32ShrU, i32Add, get(x.q), op.i32x4TruncSatF32x4S, tee(x.t), get(x.t)],
      [op.i16x8NarrowI32x4S, tee(x.t), get(x.t), op.i8x16NarrowI16x8S, op.vStore32Lane(0)],
      [get(x.q), get(x.z), op.f32x4Sub, get(x.s), op.f32x4Mul, set(x.dq), ...at(x.wc, x.i), get(x.dq), vStore],
      // e = w - dq in float64; the stored error f32(e) / d
      [...low64(x.w), ...low64(x.dq), op.f64x2Sub, set(x.elo), ...high64(x.w), ...high64(x.dq), op.f64x2Sub, set(x.ehi)],
      [...at(x.errs, x.i), get(x.elo), op.f32x4DemoteZero, get(x.ehi), op.f32x4DemoteZero, JOIN, get(x.dv), op.f32x4Div, tee(x.ev), vStore],
      // loss += e * e / d2, two float64 pairs
      [get(x.loss), get(x.i), i32(1), i32Shl, i32Add, tee(x.p), get(x.p), vLoad],
      [get(x.elo), get(x.elo), op.f64x2Mul, get(x.d2v), op.f64x2Div, op.f64x2Add, vStore],
      [get(x.p), i32(16), i32Add, tee(x.p), get(x.p), vLoad],
      [get(x.ehi), get(x.ehi), op.f64x2Mul, get(x.d2v), op.f64x2Div, op.f64x2Add, vStore],
      [...low64(x.ev), set(x.elo), ...high64(x.ev), set(x.ehi)],
      ...spreadRows(x),
    ]),
  ],
);

/** spread: the error at errs spread over the `count` columns after wc (float types quantize in JavaScript). */
const spread = kernel("spread", { wc: I32, errs: I32, bytes: I32, hs: I32, count: I32 }, SPREAD_LOCALS, ["i", "j", "p"], (x) => [
  forLoop(x.i, x.bytes, 16, [
    [...at(x.errs, x.i), vLoad, set(x.w)],
    [...low64(x.w), set(x.elo), ...high64(x.w), set(x.ehi)],
    ...spreadRows(x),
  ]),
]);

type Four = readonly [number, number, number, number];

/** The 4 x 4 transpose of float32 locals `rows` into locals `t`; column k of the result is then columnOf(k, t). */
function transpose4(rows: Four, t: Four): Instr[][] {
  const [a, b, c, d] = rows;
  return [
    [get(a), get(b), shuffle(lanes32(0, 4, 1, 5)), set(t[0]), get(a), get(b), shuffle(lanes32(2, 6, 3, 7)), set(t[1])],
    [get(c), get(d), shuffle(lanes32(0, 4, 1, 5)), set(t[2]), get(c), get(d), shuffle(lanes32(2, 6, 3, 7)), set(t[3])],
  ];
}
const columnOf = (k: number, t: Four): Instr[] => [
  get(t[k < 2 ? 0 : 1]),
  get(t[k < 2 ? 2 : 3]),
  shuffle(k % 2 === 0 ? lanes32(0, 1, 4, 5) : lanes32(2, 3, 6, 7)),
];
/** base + jb + k * stride (locals base, jb, stride) */
const plusRows = (base: number, jb: number, stride: number, k: number): Instr[] => [
  ...at(base, jb),
  ...(k > 0 ? [get(stride), i32(k), i32Mul, i32Add] : []),
];
/** the int32 at cols + jb + 4k, plus rb: where row rb / 4 of column j + k lies */
const columnAddress = (cols: number, jb: number, rb: number, k: number): Instr[] => [
  ...at(cols, jb),
  i32(4 * k),
  i32Add,
  op.i32Load,
  get(rb),
  i32Add,
];
const K4 = [0, 1, 2, 3] as const;

/**
 * transposeIn: the row-major weight at src ([out, inF], a row `inBytes` long) into columns:
 * column j's `out` values at the address cols[j] (int32).
 */
const transposeIn = kernel(
  "transposeIn",
  { src: I32, inBytes: I32, outBytes: I32, cols: I32 },
  ["rb", "jb", "rowp", "sp", "j0", "jEnd", "a", "b", "c", "d", "t0", "t1", "t2", "t3"],
  ["rb", "jb", "rowp", "sp", "j0", "jEnd"],
  (x) => {
    const rows = [x.a, x.b, x.c, x.d] as const;
    const t = [x.t0, x.t1, x.t2, x.t3] as const;
    return [
      forLoop(x.j0, x.inBytes, TILE_IN, [
        [...tileEnd(x.j0, TILE_IN, x.inBytes, x.jEnd), get(x.src), set(x.rowp)],
        forLoop(x.rb, x.outBytes, 16, [
          forFrom(x.jb, x.j0, x.jEnd, 16, [
            ...K4.map((k) => [...plusRows(x.rowp, x.jb, x.inBytes, k), vLoad, set(rows[k])]),
            ...transpose4(rows, t),
            ...K4.map((k) => [...columnAddress(x.cols, x.jb, x.rb, k), ...columnOf(k, t), vStore]),
          ]),
          [get(x.rowp), get(x.inBytes), i32(2), i32Shl, i32Add, set(x.rowp)],
        ]),
      ]),
    ];
  },
);

/** Byte k of lanes 0-3, for k = 0..3: the 4 x 4 transpose of four lanes' bytes. */
const BYTE_TRANSPOSE = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/**
 * transposeOut: transposeIn's inverse for the dequantized values (column j at cols[j], into
 * row-major dst) and the int8 codes (column j at codesT + (cols[j] - wt) / 4, into row-major codes).
 */
const transposeOut = kernel(
  "transposeOut",
  { dst: I32, codes: I32, inBytes: I32, outBytes: I32, cols: I32, wt: I32, codesT: I32 },
  ["rb", "jb", "rowp", "crow", "inF", "p0", "p1", "p2", "p3", "j0", "jEnd", "a", "b", "c", "d", "t0", "t1", "t2", "t3", "v"],
  ["rb", "jb", "rowp", "crow", "inF", "p0", "p1", "p2", "p3", "j0", "jEnd"],
  (x) => {
    const ps = [x.p0, x.p1, x.p2, x.p3] as const;
    const cols = [x.a, x.b, x.c, x.d] as const;
    const t = [x.t0, x.t1, x.t2, x.t3] as const;
    const codeAt = (k: number): Instr[] => [get(ps[k] as number), get(x.wt), op.i32Sub, i32(2), i32ShrU, get(x.codesT), i32Add];
    return [
      [get(x.inBytes), i32(2), i32ShrU, set(x.inF)],
      forLoop(x.j0, x.inBytes, TILE_OUT, [
        [...tileEnd(x.j0, TILE_OUT, x.inBytes, x.jEnd), get(x.dst), set(x.rowp), get(x.codes), set(x.crow)],
        forLoop(x.rb, x.outBytes, 16, [
          forFrom(x.jb, x.j0, x.jEnd, 16, [
            ...K4.map((k) => [...columnAddress(x.cols, x.jb, x.rb, k), tee(ps[k]), vLoad, set(cols[k])]),
            ...transpose4(cols, t),
            ...K4.map((k) => [...plusRows(x.rowp, x.jb, x.inBytes, k), ...columnOf(k, t), vStore]),
            // the codes: four columns' 4 bytes into one vector, transposed, a row's 4 bytes each
            [...codeAt(0), op.vLoad32Zero, set(x.v)],
            ...[1, 2, 3].map((k) => [...codeAt(k), get(x.v), op.vLoad32Lane(k), set(x.v)]),
            [get(x.v), get(x.v), shuffle(BYTE_TRANSPOSE), set(x.v)],
            ...K4.map((k) => [
              get(x.crow),
              get(x.jb),
              i32(2),
              i32ShrU,
              i32Add,
              ...(k > 0 ? [get(x.inF), i32(k), i32Mul, i32Add] : []),
              get(x.v),
              op.vStore32Lane(k),
            ]),
          ]),
          [get(x.rowp), get(x.inBytes), i32(2), i32Shl, i32Add, set(x.rowp), get(x.crow), get(x.inBytes), i32Add, set(x.crow)],
        ]),
      ]),
    ];
  },
);

/**
 * groupExtremes: each group's min (clamped to <= 0) and max (>= 0) of the row-major weight at
 * src (`rows` rows of `rowBytes`, groups of `groupBytes`, the last one possibly shorter), NaN
 * skipped, as float64 [rows, groups] at mins and maxs: computeQParams's loop.
 */
const groupExtremes = kernel(
  "groupExtremes",
  { src: I32, rows: I32, rowBytes: I32, groupBytes: I32, mins: I32, maxs: I32 },
  ["r", "gb", "len", "i", "gp", "o", "mn", "mx", "v"],
  ["r", "gb", "len", "i", "gp", "o"],
  (x) => {
    const reduce = (v: number, pick: Instr, dst: number): Instr[] => [
      ...[get(dst), get(x.o), i32Add],
      ...[get(v), op.f32x4ExtractLane(0), get(v), op.f32x4ExtractLane(1), pick, get(v), op.f32x4ExtractLane(2), pick],
      ...[get(v), op.f32x4ExtractLane(3), pick, op.f64PromoteF32, op.f64Store],
    ];
    return [
      [i32(0), set(x.o)],
      forLoop(x.r, x.rows, 1, [
        [get(x.src), get(x.r), get(x.rowBytes), i32Mul, i32Add, set(x.gp)],
        forLoop(x.gb, x.rowBytes, 0, [
          // the group's length: groupBytes, or what is left of the row
          [get(x.groupBytes), get(x.rowBytes), get(x.gb), op.i32Sub, get(x.rowBytes), get(x.gb), op.i32Sub, get(x.groupBytes)],
          [op.i32GtU, op.select, set(x.len), op.vZero, set(x.mn), op.vZero, set(x.mx)],
          forLoop(x.i, x.len, 16, [
            [get(x.gp), get(x.gb), i32Add, get(x.i), i32Add, vLoad, set(x.v)],
            [get(x.mn), get(x.v), op.f32x4Pmin, set(x.mn), get(x.mx), get(x.v), op.f32x4Pmax, set(x.mx)],
          ]),
          reduce(x.mn, op.f32Min, x.mins),
          reduce(x.mx, op.f32Max, x.maxs),
          [get(x.o), i32(8), i32Add, set(x.o), get(x.gb), get(x.len), i32Add, set(x.gb)],
        ]),
      ]),
    ];
  },
);

interface Kernels {
  quantSpreadInt(
    wc: number,
    codes: number,
    errs: number,
    scale: number,
    zp: number,
    loss: number,
    bytes: number,
    hs: number,
    count: number,
    d: number,
    d2: number,
    qmin: number,
    qmax: number,
  ): void;
  spread(wc: number, errs: number, bytes: number, hs: number, count: number): void;
  transposeIn(src: number, inBytes: number, outBytes: number, cols: number): void;
  groupExtremes(src: number, rows: number, rowBytes: number, groupBytes: number, mins: number, maxs: number): void;
  transposeOut(dst: number, codes: number, inBytes: number, outBytes: number, cols: number, wt: number, codesT: number): void;
}

let compiled: WebAssembly.Module | null = null;

/** Largest memory a job may lay out (wasm32 addresses; larger jobs take the JavaScript loops). */
export const SIMD_MAX_BYTES = 2 ** 31;

/**
 * One WebAssembly memory with the kernels over it, reused job after job on one thread. `layout`
 * places a job's arrays (growing the memory, which invalidates earlier views); the kernels take
 * byte addresses in it.
 */
export class SimdColumns {
  readonly memory = new WebAssembly.Memory({ initial: 0 });
  readonly kernels: Kernels;

  constructor() {
    compiled ??= new WebAssembly.Module(wasmModule([quantSpreadInt, spread, transposeIn, transposeOut, groupExtremes]));
    this.kernels = new WebAssembly.Instance(compiled, { env: { memory: this.memory } }).exports as unknown as Kernels;
  }

  /** Addresses of arrays of `bytes` each, 16-byte aligned, after growing the memory to hold them. */
  layout(bytes: readonly number[]): number[] {
    let top = 0;
    const at = bytes.map((b) => {
      const a = top;
      top += Math.ceil(b / 16) * 16;
      return a;
    });
    const have = this.memory.buffer.byteLength;
    if (top > have) this.memory.grow(Math.ceil((top - have) / 65536));
    return at;
  }

  f32(at: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, at, n);
  }
}

const free: SimdColumns[] = [];

/** A SimdColumns of this thread not in use (a new one when all are). */
export function takeColumns(): SimdColumns {
  return free.pop() ?? new SimdColumns();
}

/** Hand one back; kept for the next job (one per thread) unless it holds more than `keepBytes`. */
export function giveColumns(c: SimdColumns, keepBytes: number): void {
  if (c.memory.buffer.byteLength <= keepBytes && free.length === 0) free.push(c);
}
