"""The one thing pyproject.toml cannot declare: steplog's optional C extension
(steplog/_otlp_speedups.c, the span export process's OTLP encoding). ``optional``: where
it does not build (no C compiler), the install goes on and steplog.otlp encodes in
Python, the same bytes."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "steplog._otlp_speedups",
            ["steplog/_otlp_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
