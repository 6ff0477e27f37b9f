"""``.. lrp-composites::``: the registered LRP composites, read from the registry.

One row per name in ``deeplight_bids.lrp.composites.COMPOSITES``: the name, the first
line of its factory's docstring, and the rule each layer type gets (from the composite the
factory builds), so the table follows the code when presets are added or renamed.
"""

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _types(layer_types):
    return " | ".join(cls.__name__ for cls in layer_types)


def _rule(rule):
    """``Name(param=value, ...)`` with the rule's numeric parameters (from ``describe()``)."""
    describe = getattr(rule, "describe", None)
    if describe is None:
        return repr(rule)
    params = ", ".join(
        f"{key}={value:g}"
        for key, value in describe().items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    return f"{type(rule).__name__}({params})"


def _rules(composite):
    parts = [f"first {_types(t)}: {_rule(rule)}" for t, rule in composite.first_map]
    parts += [f"{_types(t)}: {_rule(rule)}" for t, rule in composite.layer_map]
    return parts


class LRPComposites(SphinxDirective):
    """A definition list: name -> summary and the type -> rule map."""

    has_content = False

    def run(self):
        from deeplight_bids.lrp.composites import COMPOSITES

        if not COMPOSITES:
            raise self.error("no composites registered in deeplight_bids.lrp.composites.COMPOSITES")
        definitions = nodes.definition_list()
        for name in sorted(COMPOSITES):
            factory = COMPOSITES[name]
            item = nodes.definition_list_item()
            term = nodes.term()
            term += nodes.literal(text=name)
            item += term
            definition = nodes.definition()
            summary = (factory.__doc__ or "").strip().splitlines()
            if summary:
                # The summary is reStructuredText (``literals``, :class: roles).
                text_nodes, messages = self.state.inline_text(summary[0], self.lineno)
                definition += nodes.paragraph("", "", *text_nodes)
                definition += messages
            rules = nodes.bullet_list()
            for text in _rules(factory()):
                entry = nodes.list_item()
                paragraph = nodes.paragraph()
                paragraph += nodes.literal(text=text)
                entry += paragraph
                rules += entry
            definition += rules
            item += definition
            definitions += item
        return [definitions]


def setup(app):
    app.add_directive("lrp-composites", LRPComposites)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
