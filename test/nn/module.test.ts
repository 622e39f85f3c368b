import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../src/engine/tensor.js";
import { Linear } from "../../src/nn/layers.js";
import type { Parameter } from "../../src/nn/module.js";
import { TINY, openAfmoe } from "../helpers.js";

test("dotted names and class names follow the Hugging Face module tree", () => {
  const { model } = openAfmoe(TINY, { load: false });
  const names = new Map(model.namedModules());
  assert.equal(names.get("model.layers.1.mlp")?.className, "AfmoeMoE");
  assert.equal(names.get("model.layers.1.mlp.router")?.className, "AfmoeTokenChoiceRouter");
  assert.equal(names.get("model.layers.1.mlp.router.gate")?.className, "Linear");
  assert.equal(names.get("model.layers.1.mlp.experts.3.gate_proj")?.className, "Linear");
  assert.equal(names.get("model.layers.1.mlp.shared_experts")?.className, "AfmoeMLP");
  assert.equal(names.get("model.layers.0.mlp")?.className, "AfmoeMLP");
  const params = model.namedParameters().map(([n]) => n);
  assert.ok(params.includes("model.layers.1.mlp.expert_bias"));
  assert.ok(params.includes("lm_head.weight"));
});

test("pre-hooks replace inputs, post-hooks replace outputs, removers remove", async () => {
  const lin = new Linear(2, 2);
  (lin.namedParameters()[0] as [string, Parameter])[1].value = new Tensor(new Float32Array([1, 0, 0, 1]), [2, 2]);
  const seen: number[][] = [];
  const removePre = lin.registerForwardPreHook(
    (_m, x) =>
      new Tensor(
        x.data.map((v) => v * 2),
        x.shape,
      ),
  );
  const removePost = lin.registerForwardHook((_m, x, y) => {
    seen.push([...x.data]);
    return new Tensor(
      y.data.map((v) => v + 1),
      y.shape,
    );
  });
  const y = await lin.call(new Tensor(new Float32Array([1, 2]), [1, 2]));
  assert.deepEqual([...y.data], [3, 5]);
  assert.deepEqual(seen, [[2, 4]]);
  removePre();
  removePost();
  assert.equal(lin.hookCount, 0);
  assert.deepEqual([...(await lin.call(new Tensor(new Float32Array([1, 2]), [1, 2]))).data], [1, 2]);
});

test("Linear.callInto writes into the caller's memory after the pre-hooks, unless a forward hook would see the output", async () => {
  const lin = new Linear(3, 2, { bias: true });
  const [w, b] = lin.namedParameters().map(([, p]) => p);
  (w as Parameter).value = new Tensor(new Float32Array([1, 2, 3, -1, 0.5, 0.25]), [2, 3]);
  (b as Parameter).value = new Tensor(new Float32Array([0.5, -2]), [2]);
  const x = new Tensor(new Float32Array([1, 0, 2, -3, 4, 0.5]), [1, 2, 3]);
  const into = new Float32Array(4).fill(Number.NaN);
  const inputs: Tensor[] = [];
  const removePre = lin.registerForwardPreHook((_m, input) => {
    inputs.push(input);
    return new Tensor(
      input.data.map((v) => v + 1),
      input.shape,
    );
  });
  const y = await lin.callInto(x, into);
  assert.equal(y.data, into, "the output is the caller's array");
  assert.deepEqual(y.shape, [1, 2, 2]);
  // (x + 1) W^T + b, row by row
  assert.deepEqual([...y.data], [2 + 2 + 9 + 0.5, -2 + 0.5 + 0.75 - 2, -2 + 10 + 4.5 + 0.5, 2 + 2.5 + 0.375 - 2]);
  const values = [...y.data];
  assert.deepEqual([...(await lin.call(x)).data], values);
  assert.deepEqual(inputs, [x, x]);
  const outputs: Tensor[] = [];
  const removePost = lin.registerForwardHook((_m, _x, out) => void outputs.push(out));
  const z = await lin.callInto(x, into.fill(Number.NaN));
  assert.notEqual(z.data, into, "a forward hook may keep the output: a fresh array");
  assert.ok(into.every(Number.isNaN));
  assert.deepEqual(outputs, [z]);
  assert.deepEqual([...z.data], values);
  removePre();
  removePost();
});

test("setSubmodule replaces by dotted name and returns the original", () => {
  const { model } = openAfmoe(TINY, { load: false });
  const original = model.getSubmodule("model.layers.2.mlp.experts.5.up_proj");
  const replacement = new Linear(128, 64);
  assert.equal(model.setSubmodule("model.layers.2.mlp.experts.5.up_proj", replacement), original);
  assert.equal(model.getSubmodule("model.layers.2.mlp.experts.5.up_proj"), replacement);
  assert.throws(() => model.setSubmodule("model.layers.9.mlp", replacement), /no submodule/);
});
