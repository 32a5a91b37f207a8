"""Run T-SQL through a real third-party SQL Server driver and print what it saw.

Used by crates/openvdi-engine/tests/tds_drivers.rs against `openvdi-engine serve`.
argv[1] is a JSON spec:
  {"driver": "pytds" | "pymssql" | "mssql_python", "port": N, "user": U, "password": P,
   "encrypt": "yes" | "no" (mssql_python; default yes),
   "database": D (optional), "timeout": seconds (optional),
   "steps": [{"sql": S, "params": {name: value} | null, "drop": bool}]}
A step with "drop" closes the socket abruptly once the query has been sent and
the timeout passed (a client that goes away mid-statement).
Prints one JSON object: {"login_error": {...}} or {"steps": [...]}, where each
step is {"sets": [{"columns": [...], "rows": [[[type, str], ...]]}],
"messages": [[number, text]], "error": {"number": n, "text": t} | null,
"timeout": bool}.
"""

import json
import sys


def typed(v):
    return [type(v).__name__, None if v is None else str(v)]


def run_pytds(spec):
    import pytds

    kw = dict(port=spec["port"], autocommit=True)
    if spec.get("timeout"):
        kw["timeout"] = spec["timeout"]
    try:
        conn = pytds.connect(
            "127.0.0.1", spec.get("database", "master"), spec["user"], spec["password"], **kw
        )
    except pytds.Error as e:
        return {"login_error": {"number": getattr(e, "msg_no", None), "text": str(e)}}
    out = []
    cur = conn.cursor()
    for step in spec["steps"]:
        r = {"sets": [], "messages": [], "error": None, "timeout": False}
        try:
            if step.get("params") is not None:
                cur.execute(step["sql"], step["params"])
            else:
                cur.execute(step["sql"])
            while True:
                if cur.description:
                    cols = [d[0] for d in cur.description]
                    rows = [[typed(v) for v in row] for row in cur.fetchall()]
                    r["sets"].append({"columns": cols, "rows": rows})
                if not cur.nextset():
                    break
        except pytds.tds_base.TimeoutError:
            r["timeout"] = True
            if step.get("drop"):
                conn._tds_socket.sock.close()
                out.append(r)
                return {"steps": out}
        except pytds.Error as e:
            r["error"] = {"number": getattr(e, "msg_no", None), "text": str(e)}
        for _cls, m in cur.messages or []:
            r["messages"].append([getattr(m, "msg_no", None), getattr(m, "text", str(m))])
        out.append(r)
    conn.close()
    return {"steps": out}


def run_pymssql(spec):
    import pymssql

    try:
        conn = pymssql.connect(
            server="127.0.0.1",
            port=str(spec["port"]),
            user=spec["user"],
            password=spec["password"],
            database=spec.get("database", "master"),
            autocommit=True,
            login_timeout=10,
            timeout=spec.get("timeout", 0),
        )
    except pymssql.Error as e:
        a = e.args[0] if e.args else None
        num = a[0] if isinstance(a, tuple) else None
        return {"login_error": {"number": num, "text": str(e)}}
    msgs = []
    conn._conn.set_msghandler(
        lambda state, severity, srv, proc, line, text: msgs.append([None, text.decode() if isinstance(text, bytes) else text])
    )
    out = []
    cur = conn.cursor()
    for step in spec["steps"]:
        del msgs[:]
        r = {"sets": [], "messages": [], "error": None, "timeout": False}
        try:
            if step.get("params") is not None:
                cur.execute(step["sql"], step["params"])
            else:
                cur.execute(step["sql"])
            while True:
                if cur.description:
                    cols = [d[0] for d in cur.description]
                    rows = [[typed(v) for v in row] for row in cur.fetchall()]
                    r["sets"].append({"columns": cols, "rows": rows})
                if not cur.nextset():
                    break
        except pymssql.Error as e:
            a = e.args
            num = a[0] if a and isinstance(a[0], int) else None
            r["error"] = {"number": num, "text": str(e)}
        r["messages"] = list(msgs)
        out.append(r)
    conn.close()
    return {"steps": out}


def run_mssql_python(spec):
    """Microsoft's mssql-python (ODBC Driver 18 underneath). Parameters are `?`
    placeholders with "params" a list; a parameterised statement goes out as
    sp_prepexec. Messages are ODBC diagnostics "[01000] (5701)": the number is the
    one in parentheses. A failed statement raises with its first error only."""
    import re
    import mssql_python

    cs = (
        f"Server=tcp:127.0.0.1,{spec['port']};UID={spec['user']};PWD={{{spec['password']}}};"
        f"Database={spec.get('database', 'master')};Encrypt={spec.get('encrypt', 'yes')};"
        "TrustServerCertificate=yes"
    )
    try:
        conn = mssql_python.connect(cs, autocommit=True, timeout=10)
    except mssql_python.Error as e:
        text = str(e)
        num = 18456 if "Login failed" in text else None
        return {"login_error": {"number": num, "text": text}}
    if spec.get("timeout"):
        conn.timeout = spec["timeout"]

    def number(state):
        m = re.search(r"\((\d+)\)", state)
        return int(m.group(1)) if m else None

    out = []
    cur = conn.cursor()
    for step in spec["steps"]:
        r = {"sets": [], "messages": [], "error": None, "timeout": False}
        try:
            if step.get("params") is not None:
                cur.execute(step["sql"], *step["params"])
            else:
                cur.execute(step["sql"])
            while True:
                # Each call clears the cursor's messages: collect them as they come.
                r["messages"] += [[number(st), tx] for st, tx in cur.messages or []]
                if cur.description:
                    cols = [d[0] for d in cur.description]
                    rows = [[typed(v) for v in row] for row in cur.fetchall()]
                    r["sets"].append({"columns": cols, "rows": rows})
                if not cur.nextset():
                    r["messages"] += [[number(st), tx] for st, tx in cur.messages or []]
                    break
        except mssql_python.Error as e:
            text = str(e)
            if "timeout" in text.lower() or "HYT00" in text:
                r["timeout"] = True
            else:
                r["error"] = {"number": None, "text": text}
        out.append(r)
    conn.close()
    return {"steps": out}


def main():
    spec = json.loads(sys.argv[1])
    if spec["driver"] == "pytds":
        res = run_pytds(spec)
    elif spec["driver"] == "mssql_python":
        res = run_mssql_python(spec)
    else:
        res = run_pymssql(spec)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
