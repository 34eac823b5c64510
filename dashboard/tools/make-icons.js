// Renders the PNG app icons (home screen, manifest) from public/icon.svg with headless Chromium.
// Run after changing icon.svg: node tools/make-icons.js
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, chromiumPath } from '../e2e/browser.js';

const publicDir = fileURLToPath(new URL('../public/', import.meta.url));
const svg = await readFile(`${publicDir}icon.svg`, 'utf8');
const inner = svg.replace(/^[\s\S]*?<svg[^>]*>/, '').replace(/<\/svg>\s*$/, '');
// Maskable icons are cropped to a circle or squircle by the launcher: full-bleed background,
// the glyph inside the central 80 % safe zone.
const maskable = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" fill="#2563eb"/>`
  + `<g transform="translate(9.6 9.6) scale(0.7)">${inner.replace(/<rect[^>]*\/>/, '')}</g></svg>`;

const browser = await chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
try {
  for (const [name, source, size] of [['icon-192.png', svg, 192], ['icon-512.png', svg, 512], ['icon-maskable-512.png', maskable, 512]]) {
    const page = await browser.newPage({ viewport: { width: size, height: size } });
    await page.setContent(`<html><body style="margin:0;background:transparent">${source.replace('<svg ', `<svg width="${size}" height="${size}" `)}</body></html>`);
    await page.screenshot({ path: `${publicDir}${name}`, omitBackground: true });
    await page.close();
    console.log(`wrote public/${name}`);
  }
} finally {
  await browser.close();
}
