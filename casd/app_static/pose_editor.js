// The pose editor of casd app: drag a joint, double-click to hide it. gr.HTML gives `element`, `props`
// and `watch`; the value is committed (and sent) on release. __LIMBS__ and __COLOURS__ are filled in by casd/app.py.
const LIMBS = __LIMBS__;
const COLOURS = __COLOURS__;
const RADIUS = 7;
let dragging = -1;
let pending = null;
const canvas = () => element.querySelector('canvas');
const current = () => pending || props.value;
function draw() {
  const c = canvas(); const v = current();
  if (!c || !v || !v.points) return;
  if (c.width !== v.width) { c.width = v.width; c.height = v.height; }
  const ctx = c.getContext('2d');
  ctx.fillStyle = '#111'; ctx.fillRect(0, 0, c.width, c.height);
  ctx.lineWidth = 4;
  LIMBS.forEach(([a, b], i) => {
    if (v.hidden[a] || v.hidden[b]) return;
    ctx.strokeStyle = COLOURS[i]; ctx.beginPath();
    ctx.moveTo(v.points[a][0], v.points[a][1]); ctx.lineTo(v.points[b][0], v.points[b][1]); ctx.stroke();
  });
  v.points.forEach(([x, y], j) => {
    if (v.hidden[j]) return;
    ctx.beginPath(); ctx.arc(x, y, j === dragging ? RADIUS + 2 : RADIUS, 0, 2 * Math.PI);
    ctx.fillStyle = '#fff'; ctx.fill(); ctx.strokeStyle = '#000'; ctx.lineWidth = 1.5; ctx.stroke(); ctx.lineWidth = 4;
  });
}
function position(ev) {
  const c = canvas(); const r = c.getBoundingClientRect();
  return [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height];
}
function pick(ev) {
  const v = current(); if (!v || !v.points) return -1;
  const [x, y] = position(ev); let best = -1; let bestDistance = 2.5 * RADIUS;
  v.points.forEach(([px, py], j) => {
    const d = Math.hypot(px - x, py - y);
    if (!v.hidden[j] && d < bestDistance) { best = j; bestDistance = d; }
  });
  return best;
}
function copy(v) {
  return {width: v.width, height: v.height, points: v.points.map(p => p.slice()), hidden: v.hidden.slice()};
}
element.addEventListener('pointerdown', ev => {
  if (ev.target.tagName !== 'CANVAS') return;
  dragging = pick(ev);
  if (dragging < 0) return;
  ev.target.setPointerCapture(ev.pointerId); ev.preventDefault();
  pending = copy(props.value); draw();
});
element.addEventListener('pointermove', ev => {
  if (dragging < 0) return;
  const c = canvas(); const [x, y] = position(ev);
  pending.points[dragging] = [Math.min(Math.max(x, 0), c.width - 0.01), Math.min(Math.max(y, 0), c.height - 0.01)];
  draw();
});
function release() {
  if (dragging < 0) return;
  const committed = pending; dragging = -1; pending = null;
  props.value = committed; draw();
}
element.addEventListener('pointerup', release);
element.addEventListener('pointercancel', release);
element.addEventListener('dblclick', ev => {
  const j = pick(ev); if (j < 0) return;
  const v = copy(props.value); v.hidden[j] = true; props.value = v; draw();
});
watch('value', draw);
draw();
