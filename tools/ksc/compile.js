#!/usr/bin/env node
// Compile every ksy/*.ksy into Python modules for the qforensics.formats package.
// Usage: node tools/ksc/compile.js KSY_DIR OUT_DIR
// The npm compiler cannot take --python-package, so imports between our own
// specs are rewritten to relative imports after generation; nothing else is touched.
'use strict';
const fs = require('fs');
const path = require('path');
const ksc = require('kaitai-struct-compiler');
const yaml = require('js-yaml');

async function main() {
  const [ksyDir, outDir] = process.argv.slice(2);
  if (!ksyDir || !outDir) {
    console.error('usage: compile.js KSY_DIR OUT_DIR');
    process.exit(2);
  }
  const load = (name) => yaml.load(fs.readFileSync(path.join(ksyDir, name + '.ksy'), 'utf8'));
  const importer = { importYaml: (name, _mode) => Promise.resolve(load(name)) };
  const specs = fs.readdirSync(ksyDir).filter((f) => f.endsWith('.ksy')).sort();
  const ours = new Set(specs.map((f) => f.replace(/\.ksy$/, '')));
  fs.mkdirSync(outDir, { recursive: true });
  let failed = false;
  for (const spec of specs) {
    const id = spec.replace(/\.ksy$/, '');
    let files;
    try {
      files = await ksc.compile('python', load(id), importer, false);
    } catch (err) {
      console.error(`${spec}: ${err && err.message ? err.message : JSON.stringify(err)}`);
      failed = true;
      continue;
    }
    for (const [name, src] of Object.entries(files)) {
      // Each spec's compile also emits its imports; keep only the spec's own module.
      if (name !== id + '.py') continue;
      const fixed = src.replace(/^import (\w+)$/gm, (line, mod) => (ours.has(mod) ? `from . import ${mod}` : line));
      fs.writeFileSync(path.join(outDir, name), fixed);
    }
  }
  process.exit(failed ? 1 : 0);
}
main();
