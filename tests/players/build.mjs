// One browser script per player: src/<name>.js -> dist/<name>.js, each
// defining window.playWhep(url, token?) (src/common.js). `npm run build`.
import * as esbuild from 'esbuild';

export const PLAYERS = ['eyevinn', 'mediamtx', 'norsk', 'whip-whep', 'binbat'];

await Promise.all(PLAYERS.map((name) => esbuild.build({
  entryPoints: [`src/${name}.js`],
  outfile: `dist/${name}.js`,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome100', 'firefox100'],
  // React (mediamtx-webrtc-react's entry) and `events` read NODE_ENV
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
})));
console.log(`built ${PLAYERS.map((name) => `dist/${name}.js`).join(' ')}`);
