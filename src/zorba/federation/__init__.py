"""The federation: the run's configuration (config.py), the server and client logic, the in-process
runner, the durable state folder and resume, robust aggregation and unreliable clients, a client's
measured memory (memprobe.py), and a run's outputs: result files, the exported model, verify. It may
import zorba.planner, zorba.memory, zorba.core, zorba.wire and zorba.errors; never a method, an
engine or the command line."""
