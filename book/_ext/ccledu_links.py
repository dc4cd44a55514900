"""Turn inline code that names something in the book into a link, without editing the sources.

The chapters and docs/ mention package objects and files as inline code (`ccledu.train.run`,
`ccledu/rules/ccl.py`, `docs/ff.md`). In the rendered book each such mention links to its
target when the target exists:

- `docs/NAME.md`, `chapters/NN_title.ipynb` (or just `NN_title.ipynb`), `chapters/README.md`
  -> that page of the book;
- `ccledu/path/mod.py`, `ccledu/rules/` -> the module's entry in the API reference;
- `ccledu.mod.name` (a trailing call such as `(x, y)` is ignored) -> the object's API entry.

Mentions whose target does not exist stay plain code (a Python name that autodoc did not
document resolves to nothing and is left as it was).
"""
import re

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms import SphinxTransform

_PAGE = re.compile(r"^(?:\.\./)?((?:docs|chapters)/[\w.-]+)\.(?:md|ipynb)$")
_BARE = re.compile(r"^(\d\d_\w+)\.ipynb$")           # `01_backprop.ipynb` in chapters/README
_FILE = re.compile(r"^ccledu/([\w/]+?)(?:\.py|/)$")
_NAME = re.compile(r"^(ccledu(?:\.\w+)+)(?:\(.*\))?$")


def _xref(node, domain, reftype, target):
    ref = addnodes.pending_xref("", refdomain=domain, reftype=reftype, reftarget=target,
                                refexplicit=True, refwarn=False, refdoc=None)
    ref["py:module"] = None
    ref["py:class"] = None
    ref += node.deepcopy()
    return ref


class LinkInlineCode(SphinxTransform):
    default_priority = 400

    def apply(self, **kwargs):
        found = self.env.found_docs
        for node in list(self.document.findall(nodes.literal)):
            if isinstance(node.parent, (nodes.reference, addnodes.pending_xref,
                                        addnodes.desc_signature)):
                continue
            text = node.astext().strip()
            new = None
            m = _PAGE.match(text)
            b = _BARE.match(text)
            if m and m.group(1) in found:
                new = _xref(node, "std", "doc", "/" + m.group(1))
            elif b and "chapters/" + b.group(1) in found:
                new = _xref(node, "std", "doc", "/chapters/" + b.group(1))
            elif (m := _FILE.match(text)) is not None:
                new = _xref(node, "py", "mod", "ccledu." + m.group(1).strip("/").replace("/", "."))
            elif (m := _NAME.match(text)) is not None:
                new = _xref(node, "py", "obj", m.group(1))
            if new is not None:
                new["refdoc"] = self.env.docname
                node.replace_self(new)


def setup(app):
    app.add_transform(LinkInlineCode)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
