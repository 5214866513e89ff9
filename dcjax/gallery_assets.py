"""The gallery's static scripts and its image viewer page (dcjax.gallery writes them as files).

`gallery.js` (written per gallery) defines `G`: ids, cluster of each image, the cluster pages'
order, each cluster's members nearest first, the similar images and duplicate groups of each
image, and the links to the original files. `nav.js` gives every page its keyboard shortcuts from
the body's data-* links. `view.html` shows one image (`view.html#INDEX`) at full size with its
previous / next in the cluster, its similar images and its duplicates. `search.js` filters the
file names on the index page. Plain JavaScript, no library: the pages open from disk.
"""

NAV_JS = r"""// Keyboard: the body's data-prev / data-next / data-up links (cluster pages: the previous /
// next cluster; PageUp / PageDown: data-prevpage / data-nextpage).
document.addEventListener('keydown', function (e) {
  if (e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'TEXTAREA')) { return; }
  var keys = {ArrowLeft: 'prev', ArrowRight: 'next', Escape: 'up', u: 'up',
              PageUp: 'prevpage', PageDown: 'nextpage'};
  var href = document.body.dataset[keys[e.key]];
  if (href) { e.preventDefault(); window.location.href = href; }
});
"""

SEARCH_JS = r"""// Search by file name (case-insensitive substring) over every image of the gallery.
function gallerySearch(text) {
  var out = document.getElementById('results');
  out.textContent = '';
  text = text.trim().toLowerCase();
  if (!text) { return; }
  var found = 0, limit = 200;
  for (var i = 0; i < G.ids.length && found < limit; i++) {
    if (G.ids[i].toLowerCase().indexOf(text) < 0) { continue; }
    found += 1;
    var a = document.createElement('a');
    a.className = 'hit';
    a.href = 'view.html#' + i;
    var img = document.createElement('img');
    img.className = 'thumb';
    img.src = G.thumb(i);
    a.appendChild(img);
    a.appendChild(document.createTextNode(G.ids[i] + ' (cluster ' + G.cluster[i] + ')'));
    out.appendChild(a);
  }
  var note = document.createElement('p');
  note.className = 'meta';
  note.id = 'hits';
  note.textContent = found + (found === limit ? '+' : '') + ' image(s) match';
  out.insertBefore(note, out.firstChild);
}
document.addEventListener('DOMContentLoaded', function () {
  var box = document.getElementById('search');
  if (box) { box.addEventListener('input', function () { gallerySearch(box.value); }); }
});
"""

VIEW_HTML = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>image</title><style>{style}
#full {{ width: auto; height: auto; max-width: 95vw; max-height: 75vh; min-height: 40vh;
         object-fit: contain; border: 1px solid #ccc; }}
.similar a {{ display: inline-block; margin: 2px; }}
.dup {{ color: #a00; }}
</style>
<script src="gallery.js"></script><script src="nav.js"></script></head>
<body>
<h1 id="name"></h1>
<nav id="links"></nav>
<p class="meta" id="where"></p>
<img id="full" alt="">
<h2 id="dups" class="dup"></h2><div class="similar" id="duplist"></div>
<h2>similar images (nearest in feature space)</h2><div class="similar" id="similar"></div>
<p class="meta">Keys: left / right: previous / next image of the cluster; Escape or u: the cluster's page.</p>
<script>
function link(href, text, id) {{
  var a = document.createElement('a'); a.href = href; a.textContent = text;
  if (id) {{ a.id = id; }}
  return a;
}}
function thumbs(box, list) {{
  box.textContent = '';
  list.forEach(function (j) {{
    var a = link('view.html#' + j, '');
    var img = document.createElement('img'); img.className = 'thumb'; img.src = G.thumb(j);
    img.title = G.ids[j] + ' (cluster ' + G.cluster[j] + ')';
    a.appendChild(img); box.appendChild(a);
  }});
}}
function show() {{
  var i = parseInt(window.location.hash.slice(1), 10);
  if (!(i >= 0 && i < G.ids.length)) {{ i = 0; }}
  var c = G.cluster[i], members = G.members[c], at = members.indexOf(i);
  var prev = members[(at - 1 + members.length) % members.length];
  var next = members[(at + 1) % members.length];
  document.title = G.ids[i];
  document.getElementById('name').textContent = G.ids[i];
  document.getElementById('full').src = G.full(i);
  var nav = document.getElementById('links'); nav.textContent = '';
  var up = G.page(c, Math.floor(at / G.perPage) + 1);
  nav.appendChild(link(up, 'cluster ' + c, 'up'));
  nav.appendChild(link('view.html#' + prev, 'previous image', 'prev'));
  nav.appendChild(link('view.html#' + next, 'next image', 'next'));
  if (G.orig[i]) {{ nav.appendChild(link(G.orig[i], 'original file', 'orig')); }}
  document.body.dataset.prev = 'view.html#' + prev;
  document.body.dataset.next = 'view.html#' + next;
  document.body.dataset.up = up;
  document.getElementById('where').textContent = 'image ' + (at + 1) + ' of ' + members.length +
      ' in cluster ' + c + ', nearest the centroid first' +
      (G.labels ? ' · label ' + G.labels[i] : '');
  var dups = G.dups[i] || [];
  document.getElementById('dups').textContent = dups.length ?
      'possible duplicates (' + dups.length + ')' : '';
  thumbs(document.getElementById('duplist'), dups);
  thumbs(document.getElementById('similar'), G.similar[i] || []);
  document.body.setAttribute('data-shown', String(i));
}}
window.addEventListener('hashchange', show);
show();
</script>
</body></html>
"""
