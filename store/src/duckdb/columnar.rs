//! Result columns to cells, a whole Arrow array at a time.
//!
//! Each array is downcast once and its values read in a tight loop; the typed
//! value then takes the declared kind exactly as [`read::coerce`] says, so
//! answers do not depend on how DuckDB typed a column (a count is `BIGINT`,
//! a sum `HUGEINT`, an average `DOUBLE`).

use super::read;
use crate::select::{Cell, ColumnKind};
use ::duckdb::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use ::duckdb::arrow::compute::cast;
use ::duckdb::arrow::datatypes::{self as types, ArrowPrimitiveType, DataType};
use ::duckdb::arrow::error::ArrowError;

/// Hands each value of column `array`, as `kind`, to `put` with its index.
pub fn push_cells(array: &ArrayRef, kind: ColumnKind, mut put: impl FnMut(usize, Cell)) -> Result<(), ArrowError> {
    let mut push = |typed: &mut dyn FnMut(usize) -> Cell| {
        for i in 0..array.len() {
            put(i, if array.is_null(i) { Cell::Null } else { read::coerce(typed(i), kind) });
        }
    };
    match array.data_type() {
        DataType::Boolean => {
            let a = array.as_boolean();
            push(&mut |i| Cell::Int(a.value(i) as i64))
        }
        // The common case of large results (a funnel's rows): no per-value
        // conversion to decide.
        DataType::Int64 if kind == ColumnKind::Int && array.null_count() == 0 => {
            let a = array.as_primitive::<types::Int64Type>();
            a.values().iter().enumerate().for_each(|(i, &v)| put(i, Cell::Int(v)));
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let a = widened::<types::Int64Type>(array)?;
            push(&mut |i| Cell::Int(a.value(i)))
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let a = widened::<types::UInt64Type>(array)?;
            push(&mut |i| Cell::Int(a.value(i).min(i64::MAX as u64) as i64))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let a = widened::<types::Float64Type>(array)?;
            push(&mut |i| Cell::Float(a.value(i)))
        }
        // DuckDB's HUGEINT (a sum of integers) arrives as a 38-digit decimal
        // of scale 0: an integer. Other decimals are fractions.
        DataType::Decimal128(_, scale) => {
            let (a, scale) = (array.as_primitive::<types::Decimal128Type>(), *scale);
            push(&mut |i| decimal(a.value(i), scale))
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            push(&mut |i| Cell::Text(a.value(i).to_owned()))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            push(&mut |i| Cell::Text(a.value(i).to_owned()))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            push(&mut |i| Cell::Text(a.value(i).to_owned()))
        }
        // Anything else (dates, UUIDs, ...) as Arrow writes it as text.
        _ => {
            let text = cast(array, &DataType::Utf8)?;
            let a = text.as_string::<i32>();
            push(&mut |i| Cell::Text(a.value(i).to_owned()))
        }
    }
    Ok(())
}

/// `array` as its widest kind of the same family (a no-op when it is one).
fn widened<T: ArrowPrimitiveType>(array: &ArrayRef) -> Result<PrimitiveArray<T>, ArrowError> {
    Ok(cast(array, &T::DATA_TYPE)?.as_primitive::<T>().clone())
}

fn decimal(value: i128, scale: i8) -> Cell {
    if scale == 0 {
        return Cell::Int(value.clamp(i64::MIN as i128, i64::MAX as i128) as i64);
    }
    Cell::Float(value as f64 / 10f64.powi(scale as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::duckdb::arrow::array::{Decimal128Array, Int32Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn cells(array: ArrayRef, kind: ColumnKind) -> Vec<Cell> {
        let mut column = Vec::new();
        push_cells(&array, kind, |_, cell| column.push(cell)).unwrap();
        column
    }

    #[test]
    fn values_take_the_declared_kind() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![Some(7), None]));
        assert_eq!(cells(ints.clone(), ColumnKind::Int), vec![Cell::Int(7), Cell::Null]);
        assert_eq!(cells(ints.clone(), ColumnKind::Float), vec![Cell::Float(7.0), Cell::Null]);
        assert_eq!(cells(ints, ColumnKind::Text), vec![Cell::Text("7".into()), Cell::Null]);
        let wide: ArrayRef = Arc::new(Int64Array::from(vec![5, -3]));
        assert_eq!(cells(wide.clone(), ColumnKind::Int), vec![Cell::Int(5), Cell::Int(-3)]);
        assert_eq!(cells(wide, ColumnKind::Float), vec![Cell::Float(5.0), Cell::Float(-3.0)]);
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("12"), Some("x")]));
        assert_eq!(cells(text.clone(), ColumnKind::Int), vec![Cell::Int(12), Cell::Null]);
        assert_eq!(cells(text, ColumnKind::Text), vec![Cell::Text("12".into()), Cell::Text("x".into())]);
    }

    #[test]
    fn huge_integers_clamp_and_decimals_keep_their_scale() {
        let huge: ArrayRef =
            Arc::new(Decimal128Array::from(vec![i128::MAX, 42]).with_precision_and_scale(38, 0).unwrap());
        assert_eq!(cells(huge, ColumnKind::Int), vec![Cell::Int(i64::MAX), Cell::Int(42)]);
        let fraction: ArrayRef = Arc::new(Decimal128Array::from(vec![1250]).with_precision_and_scale(10, 3).unwrap());
        assert_eq!(cells(fraction, ColumnKind::Float), vec![Cell::Float(1.25)]);
    }
}
