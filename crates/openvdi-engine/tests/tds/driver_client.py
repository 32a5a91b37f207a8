"""Run T-SQL through a real third-party SQL Server driver and print what it saw.

Used by crates/openvdi-engine/tests/tds_drivers.rs against `openvdi-engine serve`.
argv[1] is a JSON spec:
  {"driver": "pytds" | "pymssql" | "mssql_python" | "odbc18", "port": N, "user": U, "password": P,
   "encrypt": "yes" | "no" | "strict" (mssql_python; default yes),
   "trust": how the certificate is trusted (mssql_python; default
            "TrustServerCertificate=yes", which ODBC Driver 18 ignores with
            Encrypt=strict: there "ServerCertificate=PATH" pins the endpoint's),
   "database": D (optional), "timeout": seconds (optional),
   "steps": [{"sql": S, "params": {name: value} | null, "drop": bool}]}
A step with "drop" closes the socket abruptly once the query has been sent and
the timeout passed (a client that goes away mid-statement).
Prints one JSON object: {"login_error": {...}} or {"steps": [...]}, where each
step is {"sets": [{"columns": [...], "rows": [[[type, str], ...]]}],
"messages": [[number, text]], "error": {"number": n, "text": t} | null
(mssql_python adds "diagnostics": [[number, text]], every error of the statement),
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
    one in parentheses.

    A failed statement raises with its first error only: mssql-python's
    check_error (helpers.py) builds the exception from DDBCSQLCheckError, the
    first diagnostic record, and the cursor is reset before the caller could ask
    for more. ODBC Driver 18 does hold every ERROR token the server sent, as
    further diagnostic records of the statement handle; they are read here, with
    mssql-python's own DDBCSQLGetAllDiagRecords, by wrapping the check_error the
    cursor calls, just before it raises, and reported as "diagnostics"."""
    import re
    import mssql_python
    from mssql_python import cursor as mscursor, ddbc_bindings

    diagnostics = []
    raise_first = mscursor.check_error

    def check_error(handle_type, handle, ret):
        if ret < 0 and handle is not None:
            try:
                diagnostics.extend(ddbc_bindings.DDBCSQLGetAllDiagRecords(handle))
            except Exception as e:  # the records are a bonus; never hide the error
                diagnostics.append(["", f"DDBCSQLGetAllDiagRecords failed: {e!r}"])
        return raise_first(handle_type, handle, ret)

    mscursor.check_error = check_error

    cs = (
        f"Server=tcp:127.0.0.1,{spec['port']};UID={spec['user']};PWD={{{spec['password']}}};"
        f"Database={spec.get('database', 'master')};Encrypt={spec.get('encrypt', 'yes')};"
        + spec.get("trust", "TrustServerCertificate=yes")
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
        del diagnostics[:]
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
                r["error"]["diagnostics"] = [[number(st), tx] for st, tx in diagnostics]
        out.append(r)
    conn.close()
    return {"steps": out}


def run_odbc18(spec):
    """ODBC Driver 18 itself, the libmsodbcsql-18 that mssql-python ships and
    loads without a driver manager, called here the same way through ctypes:
    SQLPrepare, SQLBindParameter (nvarchar) and SQLExecute, which the driver
    sends as sp_prepexec, as mssql-python's DDBCSQLExecute does; then every
    diagnostic record right after SQLExecute and after each SQLMoreResults. This
    is what mssql-python cannot show for a parameterised statement: its
    DDBCSQLExecute returns SQL_SUCCESS_WITH_INFO (1), yet the statement handle
    it returns to Python has no diagnostic records left (DDBCSQLGetAllDiagRecords
    returns [], seen by wrapping check_error as run_mssql_python does), while
    the records read here, straight after SQLExecute, hold 3211, 4035 and 3014.
    Steps: {"sql": S, "params": [str, ...]}; rows are not fetched."""
    import ctypes
    import glob
    import os
    import mssql_python_odbc

    base = os.path.dirname(mssql_python_odbc.__file__)
    libs = sorted(glob.glob(os.path.join(base, "libs/linux/*/x86_64/lib/libmsodbcsql-18*.so*")))
    libs.sort(key=lambda p: "debian_ubuntu" not in p)
    if not libs:
        return {"login_error": {"number": None, "text": "no libmsodbcsql-18 in " + base}}
    d = ctypes.CDLL(libs[0])
    SQL_HANDLE_ENV, SQL_HANDLE_DBC, SQL_HANDLE_STMT = 1, 2, 3
    SQL_NTS = -3
    ok = (0, 1)  # SQL_SUCCESS, SQL_SUCCESS_WITH_INFO

    def wide(text):
        # SQLWCHAR is UTF-16 in ODBC Driver 18 for Linux.
        return ctypes.create_string_buffer((text + "\0").encode("utf-16-le"))

    def diagnostics(kind, h):
        out = []
        for i in range(1, 64):
            state = ctypes.create_string_buffer(16)
            native = ctypes.c_int()
            msg = ctypes.create_string_buffer(8192)
            n = ctypes.c_short()
            r = d.SQLGetDiagRecW(kind, h, i, state, ctypes.byref(native), msg, 4000, ctypes.byref(n))
            if r not in ok:
                break
            text = msg.raw[: n.value * 2].decode("utf-16-le")
            out.append([native.value, text.rsplit("]", 1)[-1]])
        return out

    env, dbc = ctypes.c_void_p(), ctypes.c_void_p()
    d.SQLAllocHandle(SQL_HANDLE_ENV, None, ctypes.byref(env))
    d.SQLSetEnvAttr(env, 200, ctypes.c_void_p(3), 0)  # SQL_ATTR_ODBC_VERSION = 3
    d.SQLAllocHandle(SQL_HANDLE_DBC, env, ctypes.byref(dbc))
    cs = (
        "Driver={ODBC Driver 18 for SQL Server};"
        f"Server=tcp:127.0.0.1,{spec['port']};UID={spec['user']};PWD={{{spec['password']}}};"
        f"Encrypt={spec.get('encrypt', 'yes')};TrustServerCertificate=yes"
    )
    out = ctypes.create_string_buffer(8192)
    n = ctypes.c_short()
    r = d.SQLDriverConnectW(dbc, None, wide(cs), SQL_NTS, out, 2048, ctypes.byref(n), 0)
    if r not in ok:
        msgs = diagnostics(SQL_HANDLE_DBC, dbc)
        first = msgs[0] if msgs else [None, "SQLDriverConnect failed"]
        return {"login_error": {"number": first[0], "text": first[1]}}
    d.SQLSetConnectAttrW(dbc, 102, ctypes.c_void_p(1), 0)  # SQL_ATTR_AUTOCOMMIT on
    steps = []
    for step in spec["steps"]:
        r = {"sets": [], "messages": [], "error": None, "timeout": False}
        st = ctypes.c_void_p()
        d.SQLAllocHandle(SQL_HANDLE_STMT, dbc, ctypes.byref(st))
        keep = []
        ret = d.SQLPrepareW(st, wide(step["sql"]), SQL_NTS)
        for i, v in enumerate(step.get("params") or []):
            buf = wide(v)
            ind = ctypes.c_long(SQL_NTS)
            keep += [buf, ind]
            # SQL_PARAM_INPUT, SQL_C_WCHAR, SQL_WVARCHAR
            d.SQLBindParameter(st, i + 1, 1, -8, -9, 4000, 0, buf, len(buf.raw), ctypes.byref(ind))
        if ret in ok:
            ret = d.SQLExecute(st)
        while True:
            msgs = diagnostics(SQL_HANDLE_STMT, st)
            if ret in ok or ret == 100:  # 100: SQL_NO_DATA
                r["messages"] += msgs
            else:
                first = msgs[0] if msgs else [None, f"SQLExecute returned {ret}"]
                r["error"] = {"number": first[0], "text": first[1], "diagnostics": msgs}
                break
            if ret == 100:
                break
            ret = d.SQLMoreResults(st)
        d.SQLFreeHandle(SQL_HANDLE_STMT, st)
        steps.append(r)
    d.SQLDisconnect(dbc)
    d.SQLFreeHandle(SQL_HANDLE_DBC, dbc)
    d.SQLFreeHandle(SQL_HANDLE_ENV, env)
    return {"steps": steps}


def main():
    spec = json.loads(sys.argv[1])
    if spec["driver"] == "pytds":
        res = run_pytds(spec)
    elif spec["driver"] == "mssql_python":
        res = run_mssql_python(spec)
    elif spec["driver"] == "odbc18":
        res = run_odbc18(spec)
    else:
        res = run_pymssql(spec)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
