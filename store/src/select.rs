//! Read-only SQL compiled by callers (the analytics engine) and run as given:
//! the caller writes one query per [`Dialect`], binds every value as a
//! [`Param`], and declares each result column's [`ColumnKind`] so both
//! backends hand back the same typed [`Cell`]s.

/// The SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    DuckDb,
    ClickHouse,
}

/// On ClickHouse, which keeps every link made, the user an anonymous id's
/// first link names, over its `identities` rows (`GROUP BY anonymous_id`).
/// Of two links dated alike (two writers at one moment) the smaller user
/// counts, so every query, on every server, picks the same one.
pub const CLICKHOUSE_FIRST_LINK: &str = "argMin(user_id, (linked_at_ms, user_id))";

/// A value bound to a `?` placeholder, in order of appearance.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Float(f64),
    Text(String),
}

/// What a result column holds; cells are converted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Int,
    Float,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

impl Cell {
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            Cell::Float(f) => *f as i64,
            _ => 0,
        }
    }

    pub fn float(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn text(self) -> Option<String> {
        match self {
            Cell::Text(s) => Some(s),
            Cell::Null => None,
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(f.to_string()),
        }
    }

    /// Parses a cell written as text (ClickHouse's TabSeparated output).
    pub fn parse(text: String, kind: ColumnKind) -> Cell {
        match kind {
            ColumnKind::Text => Cell::Text(text),
            ColumnKind::Int => text
                .parse::<i64>()
                .map(Cell::Int)
                .or_else(|_| text.parse::<f64>().map(|f| Cell::Int(f as i64)))
                .unwrap_or(Cell::Null),
            ColumnKind::Float => match text.as_str() {
                "nan" | "-nan" => Cell::Null,
                "inf" => Cell::Float(f64::INFINITY),
                "-inf" => Cell::Float(f64::NEG_INFINITY),
                _ => text.parse().map(Cell::Float).unwrap_or(Cell::Null),
            },
        }
    }
}

/// A query, its bound values and the kinds of its result columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Select {
    pub sql: String,
    pub params: Vec<Param>,
    pub columns: Vec<ColumnKind>,
}

/// Rows of cells, each row as long as [`Select::columns`].
pub type Rows = Vec<Vec<Cell>>;

/// One result column, read a column at a time ([`crate::EventStore::select_columns`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// A column declared [`ColumnKind::Int`], unboxed: a funnel's millions
    /// of rows take a quarter of the memory they would as cells.
    Ints(Vec<Option<i64>>),
    Cells(Vec<Cell>),
}

impl Column {
    /// An empty column of `kind`, with room for `rows` values.
    pub fn with_capacity(kind: ColumnKind, rows: usize) -> Column {
        match kind {
            ColumnKind::Int => Column::Ints(Vec::with_capacity(rows)),
            _ => Column::Cells(Vec::with_capacity(rows)),
        }
    }

    pub fn push(&mut self, cell: Cell) {
        match self {
            Column::Ints(values) => values.push(match cell {
                Cell::Null => None,
                c => Some(c.int()),
            }),
            Column::Cells(cells) => cells.push(cell),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Column::Ints(values) => values.len(),
            Column::Cells(cells) => cells.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s values (read as cells if its kind differs).
    pub fn append(&mut self, other: Column) {
        match (self, other) {
            (Column::Ints(mine), Column::Ints(theirs)) => mine.extend(theirs),
            (Column::Cells(mine), Column::Cells(theirs)) => mine.extend(theirs),
            (mine, theirs) => (0..theirs.len()).for_each(|row| mine.push(theirs.cell(row))),
        }
    }

    pub fn reserve(&mut self, more: usize) {
        match self {
            Column::Ints(values) => values.reserve(more),
            Column::Cells(cells) => cells.reserve(more),
        }
    }

    /// The values as integers or NULL, without copying an unboxed column.
    pub fn into_options(self) -> Vec<Option<i64>> {
        match self {
            Column::Ints(values) => values,
            Column::Cells(cells) => cells.iter().map(|c| if *c == Cell::Null { None } else { Some(c.int()) }).collect(),
        }
    }

    /// Value `row` when it is text (NULL, numbers and rows past the end are
    /// `None`), borrowed.
    pub fn text_at(&self, row: usize) -> Option<&str> {
        match self {
            Column::Cells(cells) => match cells.get(row) {
                Some(Cell::Text(text)) => Some(text),
                _ => None,
            },
            Column::Ints(_) => None,
        }
    }

    /// Value `row` as a cell (NULL past the end).
    pub fn cell(&self, row: usize) -> Cell {
        match self {
            Column::Ints(values) => values.get(row).copied().flatten().map_or(Cell::Null, Cell::Int),
            Column::Cells(cells) => cells.get(row).cloned().unwrap_or(Cell::Null),
        }
    }
}
