#!/usr/bin/env node
// Runs a wasm32-wasip1 test binary (cargo's `runner` for that target) under
// Node.js's WASI, forwarding arguments and the exit code. No threads on wasm32,
// so libtest is told to run tests one at a time.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [wasmPath, ...args] = argv.slice(2);
const wasi = new WASI({
  version: "preview1",
  args: [wasmPath, ...args, "--test-threads=1"],
  env,
  preopens: { "/": "/" },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
