# The service as a container: a wheel built from this checkout, no embedded servers (production
# points OMS_DATABASE_URL / OMS_REDIS_URL at real ones). deploy/compose.yaml runs N of these.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY oms oms
COPY routing routing
COPY adapters adapters
COPY sql sql
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home oms
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER oms
WORKDIR /home/oms
ENV OMS_DATA_DIR=/home/oms/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
ENTRYPOINT ["oms"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
