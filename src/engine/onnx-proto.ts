/**
 * A minimal ONNX ModelProto encoder: enough to express small graphs of standard nodes (products,
 * element-wise and reduction nodes) with symbolic dimensions, so that one onnxruntime session
 * serves every shape of an operation.
 * Field numbers follow onnx/onnx.proto.
 */

class ProtoWriter {
  private bytes: number[] = [];

  varint(value: number): this {
    let v = value;
    while (v > 0x7f) {
      this.bytes.push((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    this.bytes.push(v);
    return this;
  }

  tag(field: number, wireType: number): this {
    return this.varint(field * 8 + wireType);
  }

  int(field: number, value: number): this {
    return this.tag(field, 0).varint(value);
  }

  float(field: number, value: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(new Float32Array([value]).buffer);
    for (const x of b) this.bytes.push(x);
    return this;
  }

  bytesField(field: number, data: Uint8Array | number[]): this {
    this.tag(field, 2).varint(data.length);
    for (const b of data) this.bytes.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytesField(field, new TextEncoder().encode(s));
  }

  message(field: number, build: (w: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytesField(field, inner.bytes);
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/** ONNX TensorProto.DataType FLOAT. */
const ONNX_FLOAT = 1;

export interface ValueSpec {
  name: string;
  /** A number is a fixed dimension, a string a symbolic one. */
  dims: (number | string)[];
}

export interface NodeSpec {
  opType: string;
  inputs: string[];
  outputs: string[];
  intAttributes?: Record<string, number>;
  floatAttributes?: Record<string, number>;
  intListAttributes?: Record<string, number[]>;
}

function valueInfo(w: ProtoWriter, v: ValueSpec): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, ONNX_FLOAT);
      tensor.message(2, (shape) => {
        for (const d of v.dims) {
          shape.message(1, (dim) => (typeof d === "number" ? dim.int(1, d) : dim.string(2, d)));
        }
      });
    }),
  );
}

/** Encode a float32 model of `nodes` in order (IR version 8, default opset 17). */
export function encodeModel(name: string, nodes: NodeSpec[], inputs: ValueSpec[], outputs: ValueSpec[]): Uint8Array {
  const w = new ProtoWriter();
  w.int(1, 8); // ir_version
  w.string(2, "moecal"); // producer_name
  w.message(8, (op) => op.string(1, "").int(2, 17)); // opset_import
  w.message(7, (graph) => {
    for (const [k, node] of nodes.entries()) {
      graph.message(1, (n) => {
        for (const i of node.inputs) n.string(1, i);
        for (const o of node.outputs) n.string(2, o);
        n.string(3, `${node.opType}_${k}`);
        n.string(4, node.opType);
        for (const [attr, value] of Object.entries(node.intAttributes ?? {})) {
          n.message(5, (a) => a.string(1, attr).int(3, value).int(20, 2)); // AttributeProto INT
        }
        for (const [attr, value] of Object.entries(node.floatAttributes ?? {})) {
          n.message(5, (a) => a.string(1, attr).float(2, value).int(20, 1)); // AttributeProto FLOAT
        }
        for (const [attr, values] of Object.entries(node.intListAttributes ?? {})) {
          n.message(5, (a) => {
            a.string(1, attr);
            for (const v of values) a.int(8, v);
            a.int(20, 7); // AttributeProto INTS
          });
        }
      });
    }
    graph.string(2, `moecal_${name}`);
    for (const v of inputs) graph.message(11, (vi) => valueInfo(vi, v));
    for (const v of outputs) graph.message(12, (vi) => valueInfo(vi, v));
  });
  return w.finish();
}
