"""Flush-free insert and update: what a flush does for the common shapes, minus the flush.

``Session.flush()`` is built for any number of objects of any shape: it builds a unit-of-work
graph, sorts it, runs dependency processors, and derives a new INSERT from its memoized one on
every flush (``return_defaults()`` is generative, so that statement's cache key is computed again
each time). For one new object, or for column changes on loaded objects of one class, all of it
ends in one statement per object. This module sends that same statement itself, through Core on
the session's own connection (so defaults, bind processing, RETURNING and rowcounts are Core's,
and the compiled form is shared with the flush through the mapper's compiled cache), then does
the flush's bookkeeping with the flush's own functions:

- ``add()``: ``session.add(obj)``, then, when ``obj`` is the session's only change, the flush's
  INSERT for it; ``persistence._postfetch`` (returned and prefetched values into the object,
  server-side ones expired) and ``Session._register_persistent`` (identity map, committed state,
  the transaction's record of new objects for a rollback, ``pending_to_persistent`` events).
- ``flush_updates()``: when the session holds only column changes on loaded objects of one class,
  the flush's version-checked UPDATE per object, in the flush's order, with its rowcount check;
  then the same two bookkeeping functions, so the commit's own flush finds nothing to do.

Anything else (related objects pending, relationship or primary-key changes, deletes, mapper or
flush events, inheritance, composite keys, SQL expressions as values) is left to the flush. A
failure is handled as the flush handles one: the transaction (or savepoint) rolls back at once and
the session refuses further work until rolled back.

Everything used here beyond ``Session.add`` is private to SQLAlchemy (pinned to 2.1.x by our
dependency). It is checked once at import; when any piece is missing ``AVAILABLE`` is false and
every call takes the flush. ``tests/integration/test_fastpath_differential.py`` compares the SQL,
the stored rows and every object's state with the flush's, after random sequences of writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from sqlalchemy import Column, Insert, Table, Update, and_, bindparam
from sqlalchemy.orm import Mapper, Session, attributes
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm import persistence as _persistence
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import ClauseElement
from sqlalchemy.util import safe_reraise

_PLAN: Final = "_asyncdal_fastpath_plan"
#: Set on each mapper instance when it is configured (not class attributes).
_MAPPER_ATTRIBUTES: Final = ("_readonly_props", "_delete_orphans")

AVAILABLE: Final = (
    all(callable(getattr(Session, n, None)) for n in ("_register_persistent", "_autobegin_t"))
    and callable(getattr(_persistence, "_postfetch", None))
    and all(
        hasattr(Mapper, name)
        for name in (
            "_set_memoized_attribute",
            "_memo",
            "_compiled_cache",
            "_propkey_to_col",
            "_pk_keys_by_table",
            "_insert_cols_as_none",
            "_insert_cols_evaluating_none",
            "_insert_orm_defaults",
            "_server_default_cols",
            "_server_default_col_keys",
            "_prefer_eager_defaults",
            "_persistent_sortkey_fn",
            "_version_id_has_server_side_value",
            "_is_orphan",
            "_table_to_equated",
        )
    )
)

_Record = tuple[InstanceState[Any], dict[str, Any]]


class _Plan:
    """What the fast paths need of one mapper. Kept as a memoized attribute of the mapper, so it
    is dropped whenever SQLAlchemy drops its own (e.g. a mapper configured later adds a backref).
    """

    __slots__ = (
        "_inserts",
        "columns",
        "mapper",
        "pk_col",
        "pk_key",
        "pk_label",
        "relationships",
        "table",
        "update",
        "version_col",
        "version_key",
        "version_label",
        "version_step",
    )

    def __init__(self, mapper: Mapper[Any], table: Table) -> None:
        self.mapper = mapper
        self.table = table
        #: Attribute key -> its column.
        self.columns: dict[str, Column[Any]] = mapper._propkey_to_col[table]
        self.relationships = frozenset(rel.key for rel in mapper.relationships)
        self.pk_col = cast("Column[Any]", mapper.primary_key[0])  # a Table's: _plan() checked
        self.pk_key = mapper.get_property_by_column(self.pk_col).key
        # The bind parameter names the flush uses for the old key and version.
        self.pk_label = str(self.pk_col._label)
        version = mapper.version_id_col
        self.version_col: Column[Any] | None = version  # type: ignore[assignment]  # a Column: _plan() checked
        self.version_key = None if version is None else mapper.get_property_by_column(version).key
        self.version_label = None if version is None else str(version._label)
        self.version_step: Callable[[Any], Any] = mapper.version_id_generator  # type: ignore[assignment]  # callable: _plan() checked
        self._inserts: dict[tuple[bool, bool], Insert] = {}
        # persistence._emit_update_statements' update_stmt(), built once.
        where = [self.pk_col == bindparam(self.pk_label, type_=self.pk_col.type)]
        if version is not None:
            where.append(version == bindparam(self.version_label, type_=version.type))
        update: Update = table.update().where(and_(*where))
        if version is not None and mapper._version_id_has_server_side_value:
            # The flush asks for the version back when the column has a server default; the
            # statement always sets it, so nothing comes back, but the SQL is the flush's.
            update = update.return_defaults(version)
        self.update = update

    def insert(self, *, returning: bool, server_defaults: bool) -> Insert:
        """The flush's INSERT: its memoized statement (same key, same factory), plus what
        ``_emit_insert_statements`` derives from it on every flush, derived once here."""
        key = (returning, server_defaults)
        found = self._inserts.get(key)
        if found is None:
            mapper, table = self.mapper, self.table
            found = mapper._memo(("insert", table), table.insert)
            if returning and server_defaults:
                found = found.return_defaults(
                    *mapper._server_default_cols[table], sort_by_parameter_order=True
                )
            if returning and self.version_col is not None:
                found = found.return_defaults(self.version_col, sort_by_parameter_order=True)
            self._inserts[key] = found
        return found


def _plan(mapper: Mapper[Any]) -> _Plan | None:
    """The mapper's plan, or None when its shape always needs the flush."""
    found = mapper.__dict__.get(_PLAN, False)
    if found is not False:
        return found  # type: ignore[no-any-return]  # a _Plan or None, stored below
    plan: _Plan | None = None
    table = mapper.local_table
    if (
        isinstance(table, Table)
        and mapper.inherits is None
        and mapper.polymorphic_on is None
        and mapper.persist_selectable is table
        and len(mapper.tables) == 1
        and len(mapper.primary_key) == 1
        and mapper.eager_defaults is not True
        and all(hasattr(mapper, name) for name in _MAPPER_ATTRIBUTES)
        and not mapper._readonly_props
        and not mapper._insert_orm_defaults[table]
        and not mapper._table_to_equated[table]
        and (
            mapper.version_id_col is None
            or (isinstance(mapper.version_id_col, Column) and callable(mapper.version_id_generator))
        )
    ):
        plan = _Plan(mapper, table)
    mapper._set_memoized_attribute(_PLAN, plan)
    return plan


def _no_flush_events(session: Session, mapper: Mapper[Any], *, insert: bool) -> bool:
    """True when nothing listens to what only a flush fires (checked on every call: a listener
    may be added at any time)."""
    dispatch = mapper.dispatch
    if insert and (dispatch.before_insert or dispatch.after_insert):
        return False
    if not insert and (dispatch.before_update or dispatch.after_update):
        return False
    events = session.dispatch
    return not (
        events.before_flush
        or events.after_flush
        or events.after_flush_postexec
        or mapper.class_manager.dispatch.refresh_flush
    )


def _is_sql(value: object) -> bool:
    return hasattr(value, "__clause_element__") or isinstance(value, ClauseElement)


def _failed_as_flush(session: Session) -> None:
    """Inside ``except``: what ``Session._flush`` does when its statements fail. The transaction
    (or savepoint) rolls back now, new objects leave the session, and the session refuses more
    work until rolled back, naming this error."""
    session._autobegin_t()._begin().rollback(_capture_exception=True)


def _postfetch(plan: _Plan, state: InstanceState[Any], result: Any, *, isupdate: bool) -> None:
    """Returned and prefetched values into the object, server-side ones expired."""
    _persistence._postfetch(  # type: ignore[no-untyped-call]  # private, checked in AVAILABLE
        plan.mapper,
        None,  # the flush's UOWTransaction: only read for events and inheritance, ruled out
        plan.table,
        state,
        state.dict,
        result,
        result.context.compiled_parameters[0],
        {},
        isupdate,
        result.returned_defaults,
    )


# -- insert ----------------------------------------------------------------------------------


def add(session: Session, obj: object) -> None:
    """``session.add(obj)`` and flush; flush-free when ``obj`` is the session's only change.

    Runs inside ``AsyncSession.run_sync``.
    """
    state: InstanceState[Any] = attributes.instance_state(obj)
    transient = state.key is None and state.session_id is None
    session.add(obj)
    plan = _plan(state.mapper) if transient else None
    params = None if plan is None else _insert_params(session, state, plan)
    if plan is None or params is None:
        session.flush()
        return
    try:
        _insert(session, state, plan, params)
        session._register_persistent({state})
    except BaseException:
        with safe_reraise():
            _failed_as_flush(session)


def _insert_params(
    session: Session, state: InstanceState[Any], plan: _Plan
) -> dict[str, Any] | None:
    """The INSERT's parameters as ``persistence._collect_insert_commands`` makes them, or None
    when this object or session needs the flush."""
    mapper = plan.mapper
    if (
        len(session._new) != 1  # related objects came along (cascade), or others are pending
        or session._deleted
        or session.identity_map._modified
        or not _no_flush_events(session, mapper, insert=True)
    ):
        return None
    dict_, committed = state.dict, state.committed_state
    for key in plan.relationships:
        # Given a parent (whose key the flush copies) or children (which it inserts).
        value = dict_.get(key)
        if key in committed or not (value is None or (isinstance(value, list) and not value)):
            return None
    table = plan.table
    eval_none = mapper._insert_cols_evaluating_none[table]
    params: dict[str, Any] = {}
    for key, col in plan.columns.items():
        if key not in dict_:
            continue
        value = dict_[key]
        if value is None and col not in eval_none:
            continue
        if _is_sql(value):
            return None
        params[col.key] = value
    pk = dict_.get(plan.pk_key)
    if pk is not None and mapper.identity_key_from_primary_key((pk,)) in session.identity_map:
        return None  # an object with this key is already loaded: the flush warns and decides
    for colkey in mapper._insert_cols_as_none[table].difference(params):
        params[colkey] = None
    return params


def _insert(
    session: Session, state: InstanceState[Any], plan: _Plan, params: dict[str, Any]
) -> None:
    """The single-row branches of ``persistence._emit_insert_statements``, for one object."""
    mapper, table, dict_ = plan.mapper, plan.table, state.dict
    connection = session.connection(bind_arguments={"mapper": mapper})
    dialect = connection.dialect
    # Decided before the version is added to the parameters, as the flush does.
    has_all_pks = mapper._pk_keys_by_table[table].issubset(params)
    eager = mapper._prefer_eager_defaults(dialect, table)  # type: ignore[no-untyped-call]  # private
    has_all_defaults = not eager or mapper._server_default_col_keys[table].issubset(params)
    if plan.version_col is not None:
        params[plan.version_col.key] = plan.version_step(None)
    options = {"compiled_cache": mapper._compiled_cache}
    returning = not (
        has_all_pks
        and (has_all_defaults or not table.implicit_returning or not dialect.insert_returning)
    )
    statement = plan.insert(returning=returning, server_defaults=not has_all_defaults)
    result = connection.execute(statement, params, execution_options=options)
    if returning:
        primary_key = result.inserted_primary_key
        if primary_key is None:
            raise orm_exc.FlushError(
                f"Single-row INSERT statement for {mapper} did not produce a new primary key"
            )
        if dict_.get(plan.pk_key) is None:
            dict_[plan.pk_key] = primary_key[0]
    _postfetch(plan, state, result, isupdate=False)


# -- update ----------------------------------------------------------------------------------


def flush(session: Session) -> None:
    """``session.flush()``, its column-only UPDATEs sent by ``flush_updates()`` first.

    Runs inside ``AsyncSession.run_sync``.
    """
    flush_updates(session)
    session.flush()  # nothing left, or everything: flush_updates() sends all or nothing


def flush_updates(session: Session) -> None:
    """Send the session's changes as the flush's UPDATEs when they are only column changes on
    loaded objects of one class; otherwise leave everything to ``Session.flush()``.

    Runs inside ``AsyncSession.run_sync``, just before the commit's own flush.
    """
    if not isinstance(session, Session):
        return  # a stand-in session (unit tests), without the internals used here
    modified = session.identity_map._modified
    if not modified or session._new or session._deleted:
        return
    states = list(modified)
    plan = _plan(states[0].mapper)
    if plan is None or not _no_flush_events(session, plan.mapper, insert=False):
        return
    records: list[_Record] = []
    for state in states:
        params = _update_params(state, plan) if state.mapper is plan.mapper else None
        if params is None:
            return
        if params:
            records.append((state, params))
    sort_key = plan.mapper._persistent_sortkey_fn
    records.sort(key=lambda record: sort_key(record[0]))
    try:
        if records:
            _update(session, plan, records)
        session._register_persistent(set(states))
    except BaseException:
        with safe_reraise():
            _failed_as_flush(session)


def _update_params(state: InstanceState[Any], plan: _Plan) -> dict[str, Any] | None:
    """The UPDATE's parameters as ``persistence._collect_update_commands`` makes them: ``{}``
    for an object without a net change, None when it needs the flush."""
    mapper, committed, key = plan.mapper, state.committed_state, state.key
    if (
        key is None
        or state._deleted
        or plan.pk_key in committed
        or plan.version_key in committed
        or (mapper._delete_orphans and mapper._is_orphan(state))  # the flush deletes it
    ):
        return None
    dict_ = state.dict
    params: dict[str, Any] = {}
    for propkey, original in committed.items():
        col = plan.columns.get(propkey)
        if col is None or propkey not in dict_:
            return None  # a relationship change (the flush syncs keys) or a deleted value
        value = dict_[propkey]
        if _is_sql(value):
            return None
        if state.manager[propkey].impl.is_equal(value, original) is not True:
            params[col.key] = value
    if not params:
        return {}
    version, version_key, version_label = plan.version_col, plan.version_key, plan.version_label
    if version is not None and version_key is not None and version_label is not None:
        current = dict_.get(version_key)
        if current is None:
            return None  # an expired version: the flush loads it
        params[version_label] = current
        params[version.key] = plan.version_step(current)
    params[plan.pk_label] = key[1][0]
    return params


def _update(session: Session, plan: _Plan, records: list[_Record]) -> None:
    """``persistence._emit_update_statements`` for single-row, version-checked UPDATEs: one
    statement per object, the rowcount checked per run of objects that set the same columns."""
    connection = session.connection(bind_arguments={"mapper": plan.mapper})
    check_rowcount = connection.dialect.supports_sane_rowcount
    options = {"compiled_cache": plan.mapper._compiled_cache}
    index = 0
    while index < len(records):
        columns = records[index][1].keys()
        expected = matched = 0
        while index < len(records) and records[index][1].keys() == columns:
            state, params = records[index]
            result = connection.execute(plan.update, params, execution_options=options)
            _postfetch(plan, state, result, isupdate=True)
            matched += result.rowcount
            expected += 1
            index += 1
        if check_rowcount and matched != expected:
            raise orm_exc.StaleDataError(
                f"UPDATE statement on table '{plan.table.description}' expected to "
                f"update {expected} row(s); {matched} were matched."
            )
