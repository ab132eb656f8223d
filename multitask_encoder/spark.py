"""Prediction on Spark: `predict_udf(model, ...)`, a column function returning one struct column whose fields are
`BatchPredictor.output_schema()` (the same columns and types as the Ray path), e.g.

    predict = predict_udf("path/or/hub-id", tasks=["topic", "ner"])
    df.withColumn("prediction", predict("text")).select("id", "prediction.*").write.parquet("out")

Built on Spark's Arrow UDF (`pyspark.sql.functions.arrow_udf`, Spark >= 4.1): batches of the text column arrive
as Arrow arrays and the predictions leave as one Arrow struct array, nested fields included (per-label scores,
entities). `pyspark.ml.functions.predict_batch_udf` is the same idea but accepts only scalar and array fields
in a struct, so it cannot carry the entities or the per-label scores. The model loads once per Python worker
(kept for the next tasks, as `predict_batch_udf` keeps its model), on the first batch it predicts.

`pip install "multitask-encoder[spark]"` (and a Java runtime for Spark itself).
"""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa

from .batch_predict import BatchPredictError
from .batch_predictor import BatchPredictor

# One BatchPredictor (one model) per Python worker process and UDF, reused across Spark tasks.
_WORKER_PREDICTORS: dict[str, BatchPredictor] = {}


def spark_type(arrow_type: pa.DataType):
    """The Spark SQL type of a prediction column's Arrow type (a fixed-size list is an array)."""
    from pyspark.sql import types

    if pa.types.is_struct(arrow_type):
        return types.StructType(
            [types.StructField(field.name, spark_type(field.type), True) for field in arrow_type]
        )
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return types.ArrayType(spark_type(arrow_type.value_type), True)
    simple = {
        pa.string(): types.StringType(),
        pa.float64(): types.DoubleType(),
        pa.float32(): types.FloatType(),
        pa.int64(): types.LongType(),
    }
    if arrow_type not in simple:
        raise BatchPredictError(f"no Spark type for the prediction column type {arrow_type}")
    return simple[arrow_type]


def predict_udf(model: str, *, pairs: bool = False, threads: int | None = 1, **predictor_options: Any):
    """A Spark column function: `predict_udf(model, ...)(text_column)`, or with `pairs=True`
    `(text_column, text_pair_column)`, returning a struct column with the fields of
    `BatchPredictor(model, **predictor_options).output_schema()` (null fields for an empty text).
    `threads` torch threads per Python worker (Spark runs one per executor core: 1 by default). The tasks
    and the schema are checked here, from the model's config."""
    from pyspark.sql.functions import arrow_udf

    for option in ("text_column", "text_pair_column"):
        if option in predictor_options:
            raise BatchPredictError(f"predict_udf takes the text columns as its arguments, not {option}")
    predictor = BatchPredictor(
        model,
        text_column="text",
        text_pair_column="text_pair" if pairs else None,
        threads=threads,
        **predictor_options,
    )
    schema = predictor.output_schema()
    return_type = spark_type(pa.struct(list(schema)))
    key = uuid.uuid4().hex

    def predict_arrays(texts: pa.Array, text_pairs: pa.Array | None = None) -> pa.Array:
        worker = _WORKER_PREDICTORS.get(key)
        if worker is None:
            worker = _WORKER_PREDICTORS[key] = predictor
        columns = {"text": texts} if text_pairs is None else {"text": texts, "text_pair": text_pairs}
        predictions = worker.predict_table(pa.table(columns))
        arrays = [column.combine_chunks() for column in predictions.columns]
        fields = [
            pa.field(field.name, pa.list_(field.type.value_type))
            if pa.types.is_fixed_size_list(field.type)
            else field
            for field in predictions.schema
        ]
        arrays = [array.cast(field.type) for array, field in zip(arrays, fields)]
        return pa.StructArray.from_arrays(arrays, fields=fields)

    if pairs:

        def predict_pairs(texts: pa.Array, text_pairs: pa.Array) -> pa.Array:
            return predict_arrays(texts, text_pairs)

        return arrow_udf(predict_pairs, return_type)

    def predict_texts(texts: pa.Array) -> pa.Array:
        return predict_arrays(texts)

    return arrow_udf(predict_texts, return_type)
