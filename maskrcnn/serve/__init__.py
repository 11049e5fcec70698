"""Serving: a trained checkpoint behind an HTTP API and a web page (``docs/serving.md``).

    python -m maskrcnn.serve --weights CKPT [--host 127.0.0.1] [--port 8000]

Needs the optional extra ``pip install 'maskrcnn[serve]'`` (FastAPI, uvicorn, python-multipart).
Modules, in the order a request meets them:

- ``__main__.py``   the command line: options, the dependency check, the Predictor, uvicorn;
- ``app.py``        the FastAPI app: ``/``, ``/healthz``, ``/predict``, limits and error answers;
- ``requests.py``   query options and uploads checked and decoded (plain Python: no web framework);
- ``batching.py``   the bounded queue that batches requests onto one model thread (asyncio only);
- ``runner.py``     a batch through ``Predictor.predict_decoded`` with each request's filters;
- ``static/index.html``  the page: plain JavaScript drawing the masks, boxes and tags in the browser.
"""
