#!/usr/bin/env node
// The registry this project is developed against only mirrors Linux builds of
// node-llama-cpp's per-platform optional packages. `npm install` then writes a
// lockfile without entries for the others, and `npm ci` refuses it ("Missing:
// @node-llama-cpp/win-x64@ from lock file"). This script adds the missing
// optional entries (os/cpu-restricted, so npm skips them on other platforms).
// Run it after changing dependencies: `node scripts/lockfile-platforms.mjs`.
import { readFileSync, writeFileSync } from "node:fs";

const lockPath = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(lockPath, "utf8"));
const packages = lock.packages;
let added = 0;
for (const [path, entry] of Object.entries(packages)) {
  const optional = entry.optionalDependencies ?? {};
  for (const [name, range] of Object.entries(optional)) {
    const key = `node_modules/${name}`;
    if (packages[key] !== undefined || packages[`${path}/${key}`] !== undefined) continue;
    const platform = /(linux|mac|win)-(x64|arm64|armv7l|riscv64)/.exec(name);
    if (platform === null) throw new Error(`cannot infer os/cpu for missing optional package ${name}`);
    const os = { linux: "linux", mac: "darwin", win: "win32" }[platform[1]];
    const cpu = platform[2] === "armv7l" ? "arm" : platform[2];
    packages[key] = { version: range.replace(/^[~^]/, ""), cpu: [cpu], dev: entry.dev, license: entry.license, optional: true, os: [os] };
    added++;
  }
}
const sorted = {};
for (const key of Object.keys(packages).sort((a, b) => (a === "" ? -1 : b === "" ? 1 : a < b ? -1 : 1))) sorted[key] = packages[key];
lock.packages = sorted;
writeFileSync(lockPath, JSON.stringify(lock, null, 2) + "\n");
console.log(`added ${added} missing optional platform entries`);
