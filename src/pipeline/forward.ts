import type { Tensor } from "../engine/tensor.js";
import { FORWARD_OPTIONS, checkOptions } from "./options.js";
import { SafetensorsFile, rawToInts } from "../io/safetensors.js";
import { bytesOf, writeSafetensors, type NamedRaw } from "../io/writer.js";
import { writeFileAtomic } from "../io/atomic.js";
import { UsageError } from "../errors.js";
import { assertSafeOutput } from "../export/output.js";
import { openServed } from "./serving.js";

export interface ForwardFileOptions {
  model: string;
  inputIds: string;
  output: string;
}

function f32Raw(name: string, t: Tensor): NamedRaw {
  return { name, dtype: "F32", shape: [...t.shape], bytes: bytesOf(t.data) };
}

/** Read `input_ids` [B, S] from a safetensors file, run the model, write logits and hidden states (F32). */
export async function forwardFile(options: ForwardFileOptions): Promise<{ batch: number; seq: number; layers: number }> {
  const opts = checkOptions("forwardFile", FORWARD_OPTIONS, options);
  assertSafeOutput(
    opts.output,
    [
      { what: "model", path: opts.model },
      { what: "--input-ids file", path: opts.inputIds },
    ],
    "file",
  );
  const f = SafetensorsFile.open(opts.inputIds);
  if (!f.tensors.has("input_ids")) throw new UsageError(`${opts.inputIds}: no tensor named "input_ids"`);
  const info = f.info("input_ids");
  if (info.shape.length !== 2) throw new UsageError(`${opts.inputIds}: "input_ids" must be [batch, seq], got [${info.shape.join(", ")}]`);
  const ids = rawToInts(f.readRaw("input_ids"), `${opts.inputIds}: "input_ids"`);
  const [B, S] = info.shape as [number, number];
  const { model, config } = openServed(opts.model);
  const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= config.vocabSize);
  if (bad >= 0)
    throw new UsageError(
      `${opts.inputIds}: "input_ids" holds ${ids[bad]} at flat index ${bad}, outside the model's vocabulary [0, ${config.vocabSize})`,
    );
  if (S > config.maxPositionEmbeddings) {
    throw new UsageError(`${opts.inputIds}: sequence length ${S} exceeds max_position_embeddings ${config.maxPositionEmbeddings}`);
  }
  const out = await model.call({ ids: { ids: Int32Array.from(ids), shape: [B, S] }, outputHiddenStates: true });
  const tensors = [f32Raw("logits", out.logits), ...out.hiddenStates.map((h, i) => f32Raw(`hidden_states.${i}`, h))];
  writeFileAtomic(opts.output, (tmp) => writeSafetensors(tmp, tensors, { format: "pt" }));
  return { batch: B, seq: S, layers: config.numHiddenLayers };
}
