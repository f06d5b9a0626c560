"""The house's rules that a reader cannot see from one file: checked over the
whole of appliance/ by reading its code (nothing is run)."""
from __future__ import annotations

import ast
from pathlib import Path

APPLIANCE = Path(__file__).resolve().parents[1] / "appliance"
ERROR_TABLE = APPLIANCE / "web" / "errors.py"
# what makes a response out of a status (Quart's, hypercorn's and ours)
RESPONSE_MAKERS = {"plain", "Response", "make_response", "abort", "_send_error_response"}


def _modules() -> list[Path]:
    return sorted(p for p in APPLIANCE.rglob("*.py") if "__pycache__" not in p.parts)


def _is_error_status(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and type(node.value) is int
            and 400 <= node.value <= 599)


def _statuses_chosen(tree: ast.AST) -> list[int]:
    """Lines where code answers with a literal 4xx/5xx: as an argument of a
    call (``plain(text, 403)``, ``Response(status=500)``), as a ``"status"``
    entry, or compared with a response's ``status_code``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = getattr(node.func, "id", getattr(node.func, "attr", ""))
            values = [*node.args] if callee in RESPONSE_MAKERS else []
            values += [k.value for k in node.keywords if k.arg in ("status", "status_code")]
            if any(_is_error_status(v) for v in values):
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "status" \
                        and _is_error_status(value):
                    lines.append(node.lineno)
        elif isinstance(node, ast.Compare):
            names = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            if "status_code" in names and any(_is_error_status(n) for n in ast.walk(node)):
                lines.append(node.lineno)
    return lines


def test_only_the_error_table_chooses_an_error_status() -> None:
    found = {str(p.relative_to(APPLIANCE)): lines for p in _modules() if p != ERROR_TABLE
             if (lines := _statuses_chosen(ast.parse(p.read_text())))}
    assert found == {}, f"raise an appliance.errors class instead (web/errors.py maps it): {found}"


def test_the_check_finds_a_status_written_by_hand() -> None:
    """The check above can fail: each shape it looks for is found."""
    shapes = ['plain("no", 403)', 'Response("", status=500)', 'send({"status": 400})',
              'r.status_code == 404']
    for shape in shapes:
        assert _statuses_chosen(ast.parse(shape)) == [1], shape
    assert _statuses_chosen(ast.parse('plain("yes", 200); x = 500; between(1, 500)')) == []


# What the web layer may import from the rest of the appliance: its one door
# (service) and the vocabulary every layer shares (errors, values, the
# config, the SDP it parses off the wire, the package's version), plus the
# web's own credential store (admin_auth: passwords, sessions, throttles of
# HTTP clients, used by nothing but web/) and its password rules.
WEB_MAY_IMPORT = {"service", "errors", "model", "config", "sdp", "admin_auth", "passwords",
                  "__version__"}


def _appliance_imports(tree: ast.AST) -> set[str]:
    """The appliance modules (or package names) a web/ module imports."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2:   # from ..x import y / from .. import y
                out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.level == 0 and (node.module or "").startswith("appliance"):
                parts = node.module.split(".")
                out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith("appliance.")}
    return out


def test_the_web_layer_reaches_the_appliance_only_through_the_service() -> None:
    found = {}
    for path in _modules():
        if path.parent.name == "web":
            beyond = _appliance_imports(ast.parse(path.read_text())) - WEB_MAY_IMPORT
            if beyond:
                found[path.name] = sorted(beyond)
    assert found == {}, f"ask the service (appliance/service.py) instead: {found}"


def test_the_import_check_finds_a_reach_below_the_service() -> None:
    assert _appliance_imports(ast.parse("from ..sessions import Session")) == {"sessions"}
    assert _appliance_imports(ast.parse("from .. import devices, media")) == {"devices", "media"}
    assert _appliance_imports(ast.parse("import appliance.engine")) == {"engine"}
    assert _appliance_imports(ast.parse("from appliance.graph import X")) == {"graph"}
    assert _appliance_imports(ast.parse("from .common import service")) == set()
