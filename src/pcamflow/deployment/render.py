"""Text artefacts from Jinja2 templates (deployment/templates/*.j2): MODEL_CARD.md, the handover README.

The templates hold every sentence, so they can be edited without touching Python; the code passes
in ready-formatted values and the numeric tables. A name the template uses but the code does not
pass is an error (StrictUndefined), not an empty gap in the text.
"""

from __future__ import annotations

import functools

import jinja2

from pcamflow.errors import PcamflowError

TEMPLATE_PACKAGE = "pcamflow.deployment"
TEMPLATE_DIR = "templates"


def make_environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """The settings every template is rendered with (Markdown, so no HTML escaping); block tags
    ({% if %}, {% for %}) on their own line leave no blank line behind."""
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


@functools.cache
def environment() -> jinja2.Environment:
    return make_environment(jinja2.PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_DIR))


def render_template(name: str, **context) -> str:
    """Render templates/<name> with `context`; a mistake in an edited template is one line naming
    the template file (and, for an unknown name, the names it can use)."""
    try:
        template = environment().get_template(name)
    except jinja2.TemplateSyntaxError as err:
        raise PcamflowError(f"{err.filename or name}, line {err.lineno}: {err.message}") from None
    try:
        return template.render(**context)
    except jinja2.UndefinedError as err:
        raise PcamflowError(
            f"{template.filename}: {err.message}; the names it can use: {', '.join(sorted(context))}"
        ) from None
