import { type Command, Option } from "commander";
import { BUNDLED_MODEL } from "../paths.js";
import { oneshot } from "../pipeline/oneshot.js";
import { plan } from "../pipeline/plan.js";
import { formatPlan, freeDiskBytes } from "../pipeline/plan-report.js";
import { formatSummary } from "../pipeline/report.js";
import { SCHEME_NAMES } from "../quantization/scheme.js";
import { DEFAULT_STATISTICS, ROUTED_WEIGHTS, formatExpertStatistics } from "../calibration/expert-statistics.js";
import { boolOption, intOption, minSizeOption, seedOption, sizeOption } from "./options.js";
import { progressPrinter } from "./progress.js";
import { natsConnection, natsOptions } from "./worker.js";
import { distributedPlan, formatDistributed } from "../pipeline/plan-distributed.js";
import { UsageError } from "../errors.js";

interface OneshotCliOptions {
  model: string;
  dataset?: string;
  scheme?: string[];
  method?: string[];
  recipe?: string;
  groupSize?: number;
  numSamples: number;
  maxSeqLength?: number;
  calibrateAllExperts: boolean;
  expertStatistics: string;
  routedWeight: string;
  ignore?: string[];
  vllmCheck: boolean;
  seed?: bigint;
  output?: string;
  overwrite?: boolean;
  restart?: boolean;
  maxMemory?: number;
  expertGroupSize?: number;
  shardTokens?: number;
  actorder?: string;
  quiet?: boolean;
  calibrate?: boolean;
  workers?: number;
  maxShardSize?: number;
}

/** oneshot's options for a distributed run. */
interface NatsCliOptions {
  nats?: string;
  jobTimeout?: number;
  natsCreds?: string;
  natsTlsCa?: string;
  natsTlsCert?: string;
  natsTlsKey?: string;
}

/** A repeatable option's values (none given: undefined, shown as no default in --help). */
const collect = (v: string, acc: string[] = []): string[] => [...acc, v];

/** The options oneshot and plan share (plan reads them to predict the run). */
function runOptions(cmd: Command): Command {
  return cmd
    .option(
      "--model <dir>",
      "Hugging Face checkpoint folder (a family of the README's Supported table; data-free: any checkpoint)",
      BUNDLED_MODEL,
    )
    .option("--dataset <file>", "calibration data: JSON lines (text or messages) or .txt (default: the bundled prose samples)")
    .option(
      "--scheme <scheme>",
      `quantization scheme for every Linear (${SCHEME_NAMES.join(", ")}; default W4A16), or PATTERN=SCHEME for the Linears PATTERN matches (an exact name or re:REGEX; repeatable: a recipe of several schemes, resolved as compressed-tensors resolves config groups)`,
      collect,
    )
    .option(
      "--method <method>",
      "weight quantization: gptq (default) or rtn for every Linear, or PATTERN=METHOD for the --scheme entry given with that PATTERN (repeatable)",
      collect,
    )
    .option(
      "--recipe <file>",
      "an llm-compressor recipe (YAML or JSON) with QuantizationModifier / GPTQModifier: its schemes, targets, ignore lists and GPTQ settings (instead of --scheme, --method, --group-size, --actorder)",
    )
    .option("--group-size <n>", "group size for group schemes (default 128)", intOption("--group-size"))
    .option("--num-samples <n>", "calibration samples (or all there are)", intOption("--num-samples"), 512)
    .option("--max-seq-length <n>", "tokens per sample (default 2048, at most max_position_embeddings)", intOption("--max-seq-length", 2))
    .option("--calibrate-all-experts <bool>", "run every expert on every calibration token", boolOption("--calibrate-all-experts"), true)
    .option(
      "--expert-statistics <setting>",
      "GPTQ statistics of an expert: uniform (every row alike), unrouted:ALPHA (rows not routed to it weigh ALPHA) or shrink:K",
      formatExpertStatistics(DEFAULT_STATISTICS.statistics),
    )
    .addOption(
      new Option("--routed-weight <weight>", "weight of an expert's routed rows: 1, the router's combine weight, or its square")
        .choices([...ROUTED_WEIGHTS])
        .default(DEFAULT_STATISTICS.routedWeight),
    )
    .option("--ignore <name>", "Linear to leave unquantized: NAME or re:PATTERN (repeatable)", collect)
    .option("--no-vllm-check", "allow an ignore list that splits a module vLLM fuses (q/k/v, gate/up, a layer's experts)")
    .option(
      "--seed <n>",
      "dataset shuffling seed, any non-negative integer (default 42; same draw as Hugging Face datasets' shuffle(seed))",
      seedOption,
    )
    .addOption(new Option("--actorder <order>", "GPTQ activation order (default static)").choices(["static", "none"]))
    .option(
      "--calibrate",
      "with --method rtn: run the calibration forward anyway (otherwise data-free: each weight quantized from itself, no data read)",
    )
    .option(
      "--workers <n>",
      "worker threads that quantize (data-free) or run GPTQ; 0 runs them on the main thread (default: one per core)",
      intOption("--workers", 0),
    )
    .option(
      "--max-memory <size>",
      "memory the run may use (bytes, or K/M/G/T; default: the available memory): an MoE layer larger than it runs in expert groups that fit; a run that cannot fit is refused before it starts",
      sizeOption,
    )
    .option(
      "--expert-group-size <n>",
      "run each MoE layer's routed experts N at a time (default: the whole layer when it fits in --max-memory, else the largest group that does); the output is the same bytes",
      intOption("--expert-group-size"),
    )
    .option(
      "--shard-tokens <n>",
      "tokens per calibration shard, whole samples (default 65536): the unit layer inputs are read in, non-expert statistics summed by, and a distributed run's token-shard job; another size gives slightly other bytes",
      intOption("--shard-tokens"),
    );
}

/** The options as the library takes them: --actorder unset when not given (a recipe file refuses it beside it). */
function recipeOptions<T extends Pick<OneshotCliOptions, "actorder">>(o: T) {
  return { ...o, actorder: o.actorder === undefined ? undefined : o.actorder === "none" ? null : ("static" as const) };
}

export function registerOneshot(program: Command): void {
  const cmd = runOptions(
    program.command("oneshot").description("calibrate (every expert) and quantize a model; write a compressed-tensors checkpoint"),
  )
    .option("--output <dir>", "output folder (default ./<model folder>-<scheme>)")
    .option("--overwrite", "replace an existing output folder")
    .option("--restart", "discard the finished layers an interrupted run to this output left, instead of resuming after them")
    .option(
      "--max-shard-size <size>",
      "largest output shard (bytes, or K/M/G/T; at least 1M; default 2G); a data-free run resumes after its last finished shard",
      minSizeOption("--max-shard-size", "1M"),
    )
    .option("--quiet", "no progress output")
    .option(
      "--nats <url>",
      "run MoE layers' expert groups as jobs for `moecal worker` processes on this NATS JetStream server (same output bytes)",
    )
    .option(
      "--job-timeout <seconds>",
      "with --nats: seconds without a sign of life from a job's worker before the job goes to another (default 60)",
      intOption("--job-timeout"),
    );
  natsOptions(cmd).action(async (o: OneshotCliOptions & NatsCliOptions) => {
    const progress = o.quiet ? undefined : progressPrinter(process.stderr);
    const { quiet: _quiet, maxShardSize, nats, jobTimeout, natsCreds, natsTlsCa, natsTlsCert, natsTlsKey, ...run } = o;
    if (!nats && (jobTimeout || natsCreds || natsTlsCa || natsTlsCert || natsTlsKey))
      throw new UsageError("--job-timeout and --nats-* options need --nats URL");
    const result = await oneshot({
      ...recipeOptions(run),
      ...(nats ? { nats: { ...natsConnection(nats, o), jobTimeout } } : {}),
      maxShardBytes: maxShardSize,
      onProgress: progress,
      warn: (m) => process.stderr.write(`warning: ${m}\n`),
    }).finally(() => progress?.stop());
    process.stdout.write(`${formatSummary(result.report, result.output, result)}\n`);
  });
}

export function registerPlan(program: Command): void {
  runOptions(
    program
      .command("plan")
      .description("what a oneshot run with these options will need (memory, disk, time), from the config, headers and dataset only"),
  )
    .option("--output <dir>", "output folder the run would write (for the free disk space)")
    .option("--json", "print the plan as JSON")
    .option(
      "--nats-workers <n>",
      "also estimate a distributed run (oneshot --nats) with N `moecal worker` processes (--workers stays the GPTQ threads of each)",
      intOption("--nats-workers"),
    )
    .action(async (o: OneshotCliOptions & { json?: boolean; natsWorkers?: number }) => {
      const { json: _json, maxShardSize, natsWorkers, ...run } = o;
      const p = await plan({ ...recipeOptions(run), maxShardBytes: maxShardSize });
      const free = freeDiskBytes(o.output ?? process.cwd());
      const d = natsWorkers === undefined ? null : distributedPlan(p, { workers: natsWorkers, threads: o.workers });
      if (o.json) process.stdout.write(`${JSON.stringify({ ...p, free_disk_bytes: free, ...(d ? { distributed: d } : {}) }, null, 2)}\n`);
      else
        process.stdout.write(
          `${formatPlan(p)}\nfree disk where the output goes: ${(free / 1024 ** 3).toFixed(1)} GiB\n${d ? `${formatDistributed(d)}\n` : ""}`,
        );
    });
}
